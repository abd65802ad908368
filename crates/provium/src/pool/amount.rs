//! Arithmetic on [`ResourceAmount`] (the protocol crate's plain struct) and
//! the way the pool's messages show one: `612 MiB and 1 vCPU`.

use std::fmt;

use super::ResourceAmount;

/// What the pool does with amounts.
pub trait Amounts: Sized {
    fn plus(self, other: Self) -> Self;
    /// `self - other`, each part at least 0.
    fn minus(self, other: Self) -> Self;
    /// Whether `self` fits in `room` on both memory and vCPUs.
    fn fits_in(self, room: Self) -> bool;
    fn is_zero(&self) -> bool;
    fn sum(parts: &[Self]) -> Self;
}

impl Amounts for ResourceAmount {
    fn plus(self, o: Self) -> Self {
        ResourceAmount {
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            cpus: self.cpus.saturating_add(o.cpus),
        }
    }

    fn minus(self, o: Self) -> Self {
        ResourceAmount {
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            cpus: self.cpus.saturating_sub(o.cpus),
        }
    }

    fn fits_in(self, room: Self) -> bool {
        self.memory_bytes <= room.memory_bytes && self.cpus <= room.cpus
    }

    fn is_zero(&self) -> bool {
        self.memory_bytes == 0 && self.cpus == 0
    }

    fn sum(parts: &[Self]) -> Self {
        parts.iter().fold(ResourceAmount::default(), |a, b| a.plus(*b))
    }
}

/// An amount as messages show it: `612 MiB and 1 vCPU`, `50 MiB`, `2 vCPUs`
/// (`0 MiB` for nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown(pub ResourceAmount);

/// Bytes in the largest binary unit that divides them (`4 GiB`, `612 MiB`).
pub fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    if bytes == 0 {
        return "0 MiB".into();
    }
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    if bytes >= 1 << 20 {
        return format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
    }
    format!("{bytes} bytes")
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ResourceAmount { memory_bytes, cpus } = self.0;
        let vcpus = format!("{cpus} vCPU{}", if cpus == 1 { "" } else { "s" });
        match (memory_bytes, cpus) {
            (m, 0) => f.write_str(&size(m)),
            (0, _) => f.write_str(&vcpus),
            (m, _) => write!(f, "{} and {vcpus}", size(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amt(mib: u64, cpus: u32) -> ResourceAmount {
        ResourceAmount { memory_bytes: mib << 20, cpus }
    }

    #[test]
    fn pool_amounts_add_subtract_and_fit() {
        assert_eq!(amt(100, 1).plus(amt(50, 2)), amt(150, 3));
        assert_eq!(amt(100, 1).minus(amt(150, 0)), amt(0, 1));
        assert!(amt(100, 1).fits_in(amt(100, 1)));
        assert!(!amt(101, 1).fits_in(amt(100, 4)));
        assert!(!amt(1, 5).fits_in(amt(100, 4)));
        assert_eq!(ResourceAmount::sum(&[amt(1, 1), amt(2, 0), amt(3, 1)]), amt(6, 2));
        assert!(ResourceAmount::default().is_zero());
    }

    #[test]
    fn pool_amounts_read_well() {
        assert_eq!(Shown(amt(612, 1)).to_string(), "612 MiB and 1 vCPU");
        assert_eq!(Shown(amt(4096, 4)).to_string(), "4 GiB and 4 vCPUs");
        assert_eq!(Shown(amt(50, 0)).to_string(), "50 MiB");
        assert_eq!(Shown(amt(0, 2)).to_string(), "2 vCPUs");
        assert_eq!(Shown(ResourceAmount { memory_bytes: (3 << 20) / 2, cpus: 0 }).to_string(), "1536 KiB");
        assert_eq!(size(1000), "1000 bytes");
        assert_eq!(Shown(ResourceAmount::default()).to_string(), "0 MiB");
    }
}
