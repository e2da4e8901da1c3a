// One worker thread that always processes the newest item: while it is busy, a new item replaces the waiting one
// (which is dropped and counted). The camera thread hands clips to inference this way, so a slow model never holds
// up the camera (the frame sampler must see every camera frame to keep its spacing) and never works on a stale clip.
import Dispatch
import Foundation

public final class LatestOnlyWorker<Item> {
    private let queue: DispatchQueue
    private let process: (Item) -> Void
    private let lock = NSLock()
    private var pending: Item?
    private var running = false
    private var droppedCount = 0
    private let idle = DispatchGroup()

    public init(label: String, process: @escaping (Item) -> Void) {
        queue = DispatchQueue(label: label, qos: .userInitiated)
        self.process = process
    }

    /// Items replaced before the worker got to them.
    public var dropped: Int {
        lock.lock()
        defer { lock.unlock() }
        return droppedCount
    }

    public func submit(_ item: Item) {
        lock.lock()
        if running {
            if pending != nil { droppedCount += 1 }
            pending = item
            lock.unlock()
            return
        }
        running = true
        idle.enter()
        lock.unlock()
        queue.async { self.drain(item) }
    }

    /// Blocks until nothing is running or waiting (tests, and before tearing a runtime down).
    public func waitUntilIdle() {
        idle.wait()
    }

    private func drain(_ first: Item) {
        var item = first
        while true {
            process(item)
            lock.lock()
            guard let next = pending else {
                running = false
                lock.unlock()
                idle.leave()
                return
            }
            pending = nil
            lock.unlock()
            item = next
        }
    }
}
