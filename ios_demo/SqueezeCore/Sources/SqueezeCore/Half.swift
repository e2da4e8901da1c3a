// IEEE half precision <-> float, bit-exact (round to nearest even), as numpy's astype. Written with bit operations:
// Swift's Float16 is not available on every platform the app targets (Intel Macs). Port of Half in ContextPack.kt.

public enum Half {
    public static func toFloat(_ h: UInt16) -> Float {
        let bits = UInt32(h)
        let sign = (bits & 0x8000) << 16
        let exp = (bits >> 10) & 0x1F
        let mant = bits & 0x3FF
        switch exp {
        case 0:
            let v = Float(mant) * (1.0 / 16777216.0) // 2^-24: subnormals (and zero) are exact in float
            return sign != 0 ? -v : v
        case 31:
            return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13))
        default:
            return Float(bitPattern: sign | ((exp + 112) << 23) | (mant << 13))
        }
    }

    public static func fromFloat(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        let sign = (bits >> 16) & 0x8000
        let exp = Int((bits >> 23) & 0xFF)
        let mant = bits & 0x7F_FFFF
        if exp == 0xFF { return UInt16(sign | 0x7C00 | (mant != 0 ? 0x200 | (mant >> 13) : 0)) }
        let e = exp - 127 + 15
        if e >= 31 { return UInt16(sign | 0x7C00) } // overflow -> infinity
        if e <= 0 {
            if e < -10 { return UInt16(sign) } // below half the smallest subnormal: +-0
            let m = mant | 0x80_0000
            let shift = UInt32(14 - e)
            var half = m >> shift
            let rest = m & ((1 << shift) - 1)
            let halfway: UInt32 = 1 << (shift - 1)
            if rest > halfway || (rest == halfway && (half & 1) == 1) { half += 1 }
            return UInt16(sign | half)
        }
        var half = (UInt32(e) << 10) | (mant >> 13)
        let rest = mant & 0x1FFF
        if rest > 0x1000 || (rest == 0x1000 && (half & 1) == 1) { half += 1 } // may carry into the exponent: correct
        return UInt16(sign | half)
    }
}
