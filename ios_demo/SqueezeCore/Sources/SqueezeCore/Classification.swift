// From the model's logits to what the screen shows: softmax and top-k. Port of Classification.kt.
import Foundation

/// One class of a top-k list.
public struct Prediction: Equatable {
    public let index: Int
    public let label: String?
    public let probability: Double
}

public enum Classification {
    /// Numerically stable softmax in double precision (as numpy on float64 logits).
    public static func softmax(_ logits: [Float]) throws -> [Double] { try softmax(logits.map { Double($0) }) }

    public static func softmax(_ logits: [Double]) throws -> [Double] {
        try require(!logits.isEmpty, "no logits")
        let m = logits.max()!
        var e = logits.map { exp($0 - m) }
        var sum = 0.0
        for v in e { sum += v }
        for i in e.indices { e[i] /= sum }
        return e
    }

    /// Indices of the k largest values, largest first; ties keep the lower index first (numpy's stable argsort of
    /// -p); NaN ranks last.
    public static func topKIndices(_ values: [Double], k: Int) throws -> [Int] {
        try require(k >= 0, "k must be >= 0")
        let n = min(k, values.count)
        var out: [Int] = []
        var taken = [Bool](repeating: false, count: values.count)
        for _ in 0..<n {
            var best = -1
            for i in values.indices where !taken[i] {
                if best < 0 || (values[best].isNaN && !values[i].isNaN) || values[i] > values[best] { best = i }
            }
            taken[best] = true
            out.append(best)
        }
        return out
    }

    /// Top-k predictions with their labels (nil when there is no label file or the index is past it).
    public static func topK(_ logits: [Float], k: Int, labels: [String]? = nil) throws -> [Prediction] {
        let p = try softmax(logits)
        return try topKIndices(p, k: k).map { i in
            Prediction(index: i, label: labels.flatMap { i < $0.count ? $0[i] : nil }, probability: p[i])
        }
    }
}
