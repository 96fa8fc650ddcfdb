//! bushu's own integer types (`int8-sym-channel`, `int4-asym-g128`, ...) and how they are stored.
//!
//! The codes and their `(S, Z)` come from [`super::affine`]; the file stores them in the llama.cpp block
//! type that holds them exactly, so bushu's (and llama.cpp's) fast kernels run them unchanged:
//!
//! | type | container | stored value |
//! |---|---|---|
//! | `int8-sym-*` | Q8_0 | `d = f16(S)` repeated in each block of 32, `q = X_q` |
//! | `int4/int3-sym-*` | Q4_0 | `d = f16(S)`, nibble `X_q + 8` |
//! | `int4/int3-asym-*` | Q4_1 | `d = f16(S)`, `m = f16(S (Z − 8))`, nibble `X_q + 8` |
//! | `int8-asym-*` | F16 | the dequantized values (no llama.cpp type has an int8 offset) |
//!
//! Scales are rounded to f16 *before* the codes are chosen, so symmetric types are stored exactly;
//! the asymmetric ones differ from `S (X_q + Z)` by the f16 rounding of `m`. The storage cost is the
//! container's (e.g. 4.5 bits per weight for `int4-sym-g128`, not 4.25), because its scales repeat per 32;
//! a dedicated packed layout would need its own kernels. Groups run along a row; a row's last group
//! may be shorter (rows of 288 with groups of 128 end in a group of 32).

use super::affine::{AffineSpec, Granularity, QuantError, Scheme};
use anyhow::{bail, Result};
use half::f16;
use kernels::DType;

/// A parsed `intB-{sym,asym}-{tensor,channel,gN}` type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntType {
    pub spec: AffineSpec,
}

impl IntType {
    /// Parses names such as `int8-sym-channel`, `int4-asym-g128`, `int3-sym-g32`, `int8-sym-tensor`.
    pub fn parse(name: &str) -> Option<IntType> {
        let mut it = name.split('-');
        let bits: u32 = it.next()?.strip_prefix("int")?.parse().ok()?;
        let scheme = match it.next()? {
            "sym" => Scheme::Symmetric,
            "asym" => Scheme::Asymmetric,
            _ => return None,
        };
        let granularity = match it.next()? {
            "tensor" => Granularity::Tensor,
            "channel" => Granularity::Channel,
            g => Granularity::Group(g.strip_prefix('g')?.parse().ok()?),
        };
        if it.next().is_some() || !matches!(bits, 3 | 4 | 8) {
            return None;
        }
        if let Granularity::Group(g) = granularity {
            if g == 0 || g % 32 != 0 {
                return None;
            }
        }
        Some(IntType {
            spec: AffineSpec::new(bits, scheme, granularity),
        })
    }

    pub fn container(&self) -> DType {
        match (self.spec.bits, self.spec.scheme) {
            (8, Scheme::Symmetric) => DType::Q8_0,
            (8, Scheme::Asymmetric) => DType::F16,
            (_, Scheme::Symmetric) => DType::Q4_0,
            (_, Scheme::Asymmetric) => DType::Q4_1,
        }
    }
}

/// Ranges of the elements sharing one `(S, Z)` in a `rows x cols` matrix (row-major), for a
/// granularity; groups stop at row ends.
pub fn group_ranges(g: Granularity, rows: usize, cols: usize) -> Vec<std::ops::Range<usize>> {
    match g {
        #[allow(clippy::single_range_in_vec_init)]
        Granularity::Tensor => vec![0..rows * cols],
        Granularity::Channel => (0..rows).map(|r| r * cols..(r + 1) * cols).collect(),
        Granularity::Group(n) => (0..rows)
            .flat_map(|r| {
                (0..cols)
                    .step_by(n)
                    .map(move |c| r * cols + c..r * cols + (c + n).min(cols))
            })
            .collect(),
    }
}

/// `(S, Z)` of a group with the scale rounded to f16 (what the container stores).
pub fn group_params(spec: &AffineSpec, x: &[f32]) -> (f32, i32) {
    let (s, z) = spec.params(x);
    let s16 = f16::from_f32(s).to_f32();
    if s16 == 0.0 && s != 0.0 {
        // A scale below f16's range: the smallest subnormal keeps the codes meaningful.
        return (f16::from_bits(1).to_f32(), z);
    }
    (s16, z)
}

/// Writes codes (in `[qmin, qmax]`) with one `(S, Z)` per 32-element block into the container.
/// `s`/`z` give each block's parameters; `dequant` receives the values the file will hold.
pub fn pack_block(ty: &IntType, codes: &[i32], s: f32, z: i32, out: &mut Vec<u8>, dequant: &mut Vec<f32>) {
    debug_assert_eq!(codes.len(), 32);
    match ty.container() {
        DType::Q8_0 => {
            out.extend_from_slice(&f16::from_f32(s).to_le_bytes());
            out.extend(codes.iter().map(|&c| c as i8 as u8));
            dequant.extend(codes.iter().map(|&c| s * c as f32));
        }
        DType::Q4_0 => {
            out.extend_from_slice(&f16::from_f32(s).to_le_bytes());
            for j in 0..16 {
                out.push(((codes[j] + 8) as u8) | (((codes[j + 16] + 8) as u8) << 4));
            }
            dequant.extend(codes.iter().map(|&c| s * c as f32));
        }
        DType::Q4_1 => {
            let m = f16::from_f32(s * (z - 8) as f32);
            out.extend_from_slice(&f16::from_f32(s).to_le_bytes());
            out.extend_from_slice(&m.to_le_bytes());
            for j in 0..16 {
                out.push(((codes[j] + 8) as u8) | (((codes[j + 16] + 8) as u8) << 4));
            }
            dequant.extend(codes.iter().map(|&c| s * (c + 8) as f32 + m.to_f32()));
        }
        _ => {
            for &c in codes {
                let v = f16::from_f32(s * (c + z) as f32);
                out.extend_from_slice(&v.to_le_bytes());
                dequant.push(v.to_f32());
            }
        }
    }
}

/// Round-to-nearest quantization of a `rows x cols` matrix into the type's container: the file bytes,
/// the values they hold, and the reconstruction error.
pub fn encode_rtn(ty: &IntType, w: &[f32], rows: usize, cols: usize) -> Result<(Vec<u8>, Vec<f32>, QuantError)> {
    if !cols.is_multiple_of(32) {
        bail!("rows of {cols} values are not a whole number of 32-blocks");
    }
    ty.spec.check(rows, cols).or_else(|e| match ty.spec.granularity {
        Granularity::Group(_) => Ok(()), // partial last groups are allowed here
        _ => Err(e),
    })?;
    let mut params = vec![(0.0f32, 0i32); rows * cols / 32];
    for r in group_ranges(ty.spec.granularity, rows, cols) {
        let p = group_params(&ty.spec, &w[r.clone()]);
        params[r.start / 32..r.end / 32].iter_mut().for_each(|v| *v = p);
    }
    let mut out = Vec::new();
    let mut deq = Vec::with_capacity(w.len());
    let mut codes = [0i32; 32];
    for (b, x) in w.chunks_exact(32).enumerate() {
        let (s, z) = params[b];
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = ty.spec.code(v, s, z);
        }
        pack_block(ty, &codes, s, z, &mut out, &mut deq);
    }
    let err = QuantError::of(w, &deq);
    Ok((out, deq, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        let t = IntType::parse("int4-asym-g128").unwrap();
        assert_eq!(t.spec, AffineSpec::new(4, Scheme::Asymmetric, Granularity::Group(128)));
        assert_eq!(t.container(), DType::Q4_1);
        assert_eq!(IntType::parse("int8-sym-channel").unwrap().container(), DType::Q8_0);
        assert!(IntType::parse("int5-sym-g32").is_none());
        assert!(IntType::parse("int4-sym-g48").is_none());
    }

    #[test]
    fn containers_hold_the_codes() {
        let w: Vec<f32> = (0..2 * 96).map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0).collect();
        for name in [
            "int8-sym-channel",
            "int4-sym-g64",
            "int4-asym-g32",
            "int3-sym-channel",
            "int8-asym-tensor",
        ] {
            let t = IntType::parse(name).unwrap();
            let (bytes, deq, err) = encode_rtn(&t, &w, 2, 96).unwrap();
            let dt = t.container();
            let mut back = vec![0.0f32; w.len()];
            let rb = bytes.len() / 2;
            for r in 0..2 {
                kernels::quants::dequantize_row(dt, &bytes[r * rb..(r + 1) * rb], &mut back[r * 96..(r + 1) * 96]);
            }
            assert_eq!(back, deq, "{name}");
            assert!(err.rel_error < 0.05, "{name}: {err:?}");
        }
    }
}
