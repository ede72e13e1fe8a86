//! Unsigned codes of 1 to 16 bits packed back to back, least-significant bit first.
//!
//! Written by hand rather than with a bit-stream crate: it is two dozen lines on a hot path of
//! one codec ([`super::transform`]), and it keeps `collab-policies`' dependency tree (which
//! also cross-builds for aarch64) unchanged.

/// Appends codes of a fixed width to a byte buffer.
pub(super) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    filled: u32,
}

impl<'a> BitWriter<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            filled: 0,
        }
    }

    /// Appends the low `bits` (1..=16) bits of `code`.
    pub(super) fn put(&mut self, code: u32, bits: u32) {
        debug_assert!((1..=16).contains(&bits) && u64::from(code) < 1 << bits);
        self.acc |= u64::from(code) << self.filled;
        self.filled += bits;
        while self.filled >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.filled -= 8;
        }
    }

    /// Writes the last partial byte, zero-filled.
    pub(super) fn finish(self) {
        if self.filled > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

/// Reads codes written by [`BitWriter`].
pub(super) struct BitReader<'a> {
    bytes: &'a [u8],
    next: usize,
    acc: u64,
    filled: u32,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            next: 0,
            acc: 0,
            filled: 0,
        }
    }

    /// The next `bits` (1..=16) bits, or `None` past the end of the bytes.
    pub(super) fn take(&mut self, bits: u32) -> Option<u32> {
        while self.filled < bits {
            let byte = *self.bytes.get(self.next)?;
            self.acc |= u64::from(byte) << self.filled;
            self.next += 1;
            self.filled += 8;
        }
        let code = (self.acc & ((1u64 << bits) - 1)) as u32;
        self.acc >>= bits;
        self.filled -= bits;
        Some(code)
    }

    /// Bytes started so far (the last one possibly in part).
    pub(super) fn bytes_used(&self) -> usize {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_mixed_widths_round_trip() {
        let codes: Vec<(u32, u32)> = (0..200u32)
            .map(|i| {
                let bits = 1 + i % 16;
                (i.wrapping_mul(2_654_435_761) & ((1 << bits) - 1), bits)
            })
            .collect();
        let mut out = vec![];
        let mut w = BitWriter::new(&mut out);
        codes.iter().for_each(|&(c, b)| w.put(c, b));
        w.finish();
        let total: u32 = codes.iter().map(|&(_, b)| b).sum();
        assert_eq!(out.len(), total.div_ceil(8) as usize);
        let mut r = BitReader::new(&out);
        for &(c, b) in &codes {
            assert_eq!(r.take(b), Some(c));
        }
        assert_eq!(r.bytes_used(), out.len());
        assert_eq!(
            r.take(16),
            None,
            "reading past the end is None, not a panic"
        );
    }
}
