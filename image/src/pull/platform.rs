//! Choosing a manifest from an image index (manifest list) by platform, as docker does.

use std::fmt;

use oci_distribution::manifest::{ImageIndexEntry, Platform};

/// `os/arch[/variant]`, with Docker's spellings (`amd64`, `arm64`, `v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// The platform images run on here: Linux on this machine's architecture (the guest is
    /// Linux whatever the host is).
    pub fn host() -> PlatformSpec {
        let (arch, variant) = normalize_arch(std::env::consts::ARCH, None);
        PlatformSpec {
            os: "linux".to_owned(),
            arch,
            variant,
        }
    }

    /// Parses `os/arch[/variant]`; architectures in other spellings (`x86_64`, `aarch64`) are
    /// normalized. `None` for anything else.
    pub fn parse(s: &str) -> Option<PlatformSpec> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?.to_ascii_lowercase();
        let arch = parts.next().filter(|p| !p.is_empty())?.to_ascii_lowercase();
        let variant = match parts.next() {
            Some("") => return None,
            v => v.map(str::to_ascii_lowercase),
        };
        if parts.next().is_some() {
            return None;
        }
        let (arch, variant) = normalize_arch(&arch, variant);
        Some(PlatformSpec { os, arch, variant })
    }

    fn matches_os_arch(&self, p: &Platform) -> bool {
        p.os == self.os && normalize_arch(&p.architecture, None).0 == self.arch
    }

    /// Whether an entry's variant is the one asked for; with none asked, the architecture's
    /// baseline (none, or `v8` for arm64).
    fn matches_variant(&self, p: &Platform) -> bool {
        let theirs = p.variant.as_deref();
        let baseline = |v: Option<&str>| v.is_none() || (self.arch == "arm64" && v == Some("v8"));
        match self.variant.as_deref() {
            Some(v) => theirs == Some(v) || (baseline(Some(v)) && baseline(theirs)),
            None => baseline(theirs),
        }
    }

    /// The entry of an index for this platform: an exact variant match first; with no variant
    /// asked, any variant of the architecture if no baseline one is offered.
    pub fn select<'a>(&self, entries: &'a [ImageIndexEntry]) -> Option<&'a ImageIndexEntry> {
        let same_arch = || {
            entries
                .iter()
                .filter(|e| e.platform.as_ref().is_some_and(|p| self.matches_os_arch(p)))
        };
        same_arch()
            .find(|e| e.platform.as_ref().is_some_and(|p| self.matches_variant(p)))
            .or_else(|| {
                if self.variant.is_none() {
                    same_arch().next()
                } else {
                    None
                }
            })
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// `os/arch[/variant]` of an index entry, for error messages; `None` for entries that are no
/// image for any platform (attestations are `unknown/unknown`).
pub fn describe(entry: &ImageIndexEntry) -> Option<String> {
    let p = entry.platform.as_ref()?;
    if p.os == "unknown" && p.architecture == "unknown" {
        return None;
    }
    Some(match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    })
}

fn normalize_arch(arch: &str, variant: Option<String>) -> (String, Option<String>) {
    match arch {
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), variant),
        "aarch64" | "arm64" => ("arm64".into(), variant),
        "armhf" => ("arm".into(), Some(variant.unwrap_or_else(|| "v7".into()))),
        "armel" => ("arm".into(), Some(variant.unwrap_or_else(|| "v6".into()))),
        "i386" | "i686" | "x86" => ("386".into(), variant),
        "powerpc64" => ("ppc64le".into(), variant),
        other => (other.into(), variant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, os: &str, arch: &str, variant: Option<&str>) -> ImageIndexEntry {
        ImageIndexEntry {
            media_type: oci_distribution::manifest::OCI_IMAGE_MEDIA_TYPE.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                os_version: None,
                os_features: None,
                variant: variant.map(Into::into),
                features: None,
            }),
            annotations: None,
        }
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(
            PlatformSpec::parse("linux/arm64").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            PlatformSpec::parse("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            PlatformSpec::parse("linux/arm/v7").unwrap().to_string(),
            "linux/arm/v7"
        );
        for bad in ["", "linux", "linux/", "/amd64", "linux/arm/", "a/b/c/d"] {
            assert_eq!(PlatformSpec::parse(bad), None, "{bad}");
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(PlatformSpec::host().to_string(), "linux/amd64");
        }
    }

    #[test]
    fn select_like_docker() {
        let entries = [
            entry("a", "linux", "arm", Some("v7")),
            entry("b", "linux", "arm64", Some("v8")),
            entry("c", "linux", "amd64", None),
            entry("d", "unknown", "unknown", None),
            entry("e", "linux", "arm", Some("v6")),
        ];
        let pick = |s: &str| {
            PlatformSpec::parse(s)
                .unwrap()
                .select(&entries)
                .map(|e| e.digest.as_str())
        };
        assert_eq!(pick("linux/amd64"), Some("c"));
        assert_eq!(pick("linux/arm64"), Some("b"));
        assert_eq!(pick("linux/arm64/v8"), Some("b"));
        assert_eq!(pick("linux/arm/v6"), Some("e"));
        assert_eq!(pick("linux/arm"), Some("a"));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("windows/amd64"), None);
        let offered: Vec<_> = entries.iter().filter_map(describe).collect();
        assert_eq!(
            offered,
            [
                "linux/arm/v7",
                "linux/arm64/v8",
                "linux/amd64",
                "linux/arm/v6"
            ]
        );
    }
}
