// The back camera through AVFoundation: 640x480 BGRA frames at 30 fps (the frame rate the model's frame_interval
// assumes) on one serial queue, late frames discarded by the capture output. Each frame is handed to a sink with a
// closure that converts the buffer to an upright RgbFrame (CameraFrames, tested on Linux) while the buffer is locked;
// the sink (RecognitionSession.cameraFrame) calls it only for frames the sampler keeps. Apple-only (behind
// canImport(AVFoundation)); not built or run here (no Apple SDK): see ios_demo/README.md.
#if canImport(AVFoundation) && canImport(CoreVideo)
import AVFoundation
import CoreVideo
import Foundation
import SqueezeCore

public final class CameraCapture: NSObject, AVCaptureVideoDataOutputSampleBufferDelegate {
    public let session = AVCaptureSession()
    private let queue = DispatchQueue(label: "dev.squeezemobile.camera", qos: .userInitiated)
    private let output = AVCaptureVideoDataOutput()
    private var configured = false
    /// (timestamp ns, convert-to-upright-RGB) per camera frame; touched on the camera queue only
    private var sink: ((Int64, () throws -> RgbFrame) -> Void)?
    private let orientationLock = NSLock()
    private var currentOrientation: DeviceOrientation = .portrait

    /// How the phone is held now (the app updates it from UIDevice orientation changes); read per frame.
    public var orientation: DeviceOrientation {
        get { orientationLock.lock(); defer { orientationLock.unlock() }; return currentOrientation }
        set { orientationLock.lock(); currentOrientation = newValue; orientationLock.unlock() }
    }

    /// Where frames go from now on (nil: nowhere); applied on the camera queue, between two frames.
    public func setSink(_ newSink: ((Int64, () throws -> RgbFrame) -> Void)?) {
        queue.async { self.sink = newSink }
    }

    public enum CameraError: Error, CustomStringConvertible {
        case notAuthorized, noCamera, cannotConfigure(String)
        public var description: String {
            switch self {
            case .notAuthorized: return "camera access was denied; allow it in Settings > Privacy > Camera"
            case .noCamera: return "no back camera on this device"
            case .cannotConfigure(let why): return "cannot configure the camera: \(why)"
            }
        }
    }

    /// Asks for camera access when needed, configures the session once and starts it; completion on the main queue.
    public func start(completion: @escaping (Error?) -> Void) {
        let begin = { [weak self] in
            guard let self = self else { return }
            self.queue.async {
                do {
                    try self.configureOnce()
                    self.session.startRunning()
                    DispatchQueue.main.async { completion(nil) }
                } catch {
                    DispatchQueue.main.async { completion(error) }
                }
            }
        }
        switch AVCaptureDevice.authorizationStatus(for: .video) {
        case .authorized: begin()
        case .notDetermined:
            AVCaptureDevice.requestAccess(for: .video) { granted in
                if granted { begin() } else { DispatchQueue.main.async { completion(CameraError.notAuthorized) } }
            }
        default: completion(CameraError.notAuthorized)
        }
    }

    public func stop() {
        queue.async { [session] in if session.isRunning { session.stopRunning() } }
    }

    private func configureOnce() throws {
        if configured { return }
        guard let device = AVCaptureDevice.default(.builtInWideAngleCamera, for: .video, position: .back) else {
            throw CameraError.noCamera
        }
        session.beginConfiguration()
        defer { session.commitConfiguration() }
        if session.canSetSessionPreset(.vga640x480) { session.sessionPreset = .vga640x480 }
        let input = try AVCaptureDeviceInput(device: device)
        guard session.canAddInput(input) else { throw CameraError.cannotConfigure("the camera input is refused") }
        session.addInput(input)
        output.videoSettings = [kCVPixelBufferPixelFormatTypeKey as String: kCVPixelFormatType_32BGRA]
        output.alwaysDiscardsLateVideoFrames = true
        output.setSampleBufferDelegate(self, queue: queue)
        guard session.canAddOutput(output) else { throw CameraError.cannotConfigure("the video output is refused") }
        session.addOutput(output)
        // 30 fps: FrameSampler counts camera frames, and the model was trained on ~30 fps video with frame_interval 4
        try device.lockForConfiguration()
        let thirty = CMTime(value: 1, timescale: 30)
        if device.activeFormat.videoSupportedFrameRateRanges.contains(where: { $0.minFrameDuration <= thirty && thirty <= $0.maxFrameDuration }) {
            device.activeVideoMinFrameDuration = thirty
            device.activeVideoMaxFrameDuration = thirty
        }
        device.unlockForConfiguration()
        configured = true
    }

    public func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer, from connection: AVCaptureConnection) {
        guard let sink = sink, let buffer = CMSampleBufferGetImageBuffer(sampleBuffer) else { return }
        let time = CMSampleBufferGetPresentationTimeStamp(sampleBuffer)
        let nanos = time.isValid ? Int64(CMTimeGetSeconds(time) * 1e9) : Int64(bitPattern: DispatchTime.now().uptimeNanoseconds)
        let orientation = self.orientation
        sink(nanos) {
            CVPixelBufferLockBaseAddress(buffer, .readOnly)
            defer { CVPixelBufferUnlockBaseAddress(buffer, .readOnly) }
            guard let base = CVPixelBufferGetBaseAddress(buffer) else { throw CameraError.cannotConfigure("a frame without pixels") }
            return try CameraFrames.upright(UnsafeRawPointer(base), width: CVPixelBufferGetWidth(buffer),
                                            height: CVPixelBufferGetHeight(buffer),
                                            bytesPerRow: CVPixelBufferGetBytesPerRow(buffer), orientation: orientation)
        }
    }
}
#endif
