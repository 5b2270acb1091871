//! `make image`: the module as an OCI image layout (`dist/image/`: `oci-layout`, `index.json`,
//! `blobs/sha256/…`), written without a container engine.
//!
//! The image is the *compat* variant of the Wasm image specification, which both Istio's Wasm
//! image fetcher and Envoy Gateway's (a copy of it) accept: a standard OCI image whose last (here:
//! only) layer is a gzip tar (`application/vnd.oci.image.layer.v1.tar+gzip`) holding `plugin.wasm`.
//! The fetchers' other form, the *oci* variant, needs exactly two layers of Wasm-specific media
//! types that general registry tools handle less well; the compat variant is an ordinary image.
//!
//! Reproducible: the same module and the same metadata give the same bytes, so the same manifest
//! digest (the value of Istio's `WasmPlugin.sha256` and Envoy Gateway's `image.sha256` for an
//! `oci://` image). The tar entry has a fixed mtime (0), owner 0/0 and mode 0644; the gzip header
//! has no file name and no time; the image config has no timestamps; JSON is written from structs
//! (fixed key order) and sorted maps.

use anyhow::{anyhow, bail, Context, Result};
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The image's name in registries and in the push command.
pub const IMAGE_NAME: &str = "inference-router";
/// The file the compat variant's fetchers look for (by base name) in the layer.
pub const PLUGIN_FILE: &str = "plugin.wasm";

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const VERSION: &str = "org.opencontainers.image.version";
pub const REVISION: &str = "org.opencontainers.image.revision";
pub const SOURCE: &str = "org.opencontainers.image.source";
pub const TITLE: &str = "org.opencontainers.image.title";

/// A Wasm module's first bytes: the magic `\0asm`, then version 1.
const WASM_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";
/// The platform in the image config. Wasm runs anywhere; this is the container ecosystem's
/// name for Wasm images (Docker's `wasi/wasm`). The fetchers do not read it.
const OS: &str = "wasi";
const ARCHITECTURE: &str = "wasm";

/// What the manifest says about the image besides its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// `org.opencontainers.image.version`: the workspace version.
    pub version: String,
    /// `org.opencontainers.image.revision`: the git commit, or "unknown".
    pub revision: String,
    /// `org.opencontainers.image.source`: where the source is, or "unknown".
    pub source: String,
    /// `org.opencontainers.image.title`.
    pub title: String,
    /// The tag in `index.json` (`org.opencontainers.image.ref.name`).
    pub tag: String,
}

impl Meta {
    /// This workspace's version (Cargo.toml's `workspace.package.version`) as version and tag.
    pub fn for_workspace(revision: &str, source: Option<&str>) -> Meta {
        let version = env!("CARGO_PKG_VERSION").to_string();
        let repository = env!("CARGO_PKG_REPOSITORY");
        let source = source
            .filter(|s| !s.is_empty())
            .or(Some(repository).filter(|s| !s.is_empty()))
            .unwrap_or("unknown");
        Meta {
            tag: version.clone(),
            version,
            revision: if revision.is_empty() {
                "unknown".to_string()
            } else {
                revision.to_string()
            },
            source: source.to_string(),
            title: IMAGE_NAME.to_string(),
        }
    }
}

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        let digest = sha256_digest(&bytes);
        Blob {
            media_type,
            bytes,
            digest,
        }
    }

    /// The hex part of the digest (a blob's file name under `blobs/sha256/`).
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// The image in memory: what [`Image::write_layout`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
    /// `index.json`.
    pub index: Vec<u8>,
    /// The sha256 of the uncompressed layer (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub meta: Meta,
}

/// `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

#[derive(Serialize)]
struct Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

impl<'a> Descriptor<'a> {
    fn of(blob: &'a Blob) -> Descriptor<'a> {
        Descriptor {
            media_type: blob.media_type,
            digest: &blob.digest,
            size: blob.bytes.len() as u64,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

/// The OCI image config: platform and layers, no timestamps, no history.
#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
    annotations: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Index<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

/// A tar holding `module` as `plugin.wasm`: one ustar entry, mtime 0, owner 0/0, mode 0644.
pub fn plugin_tar(module: &[u8]) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE)?;
    header.set_size(module.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, module)?;
    Ok(builder.into_inner()?)
}

/// gzip with a header that has no file name, no time (0) and "unknown" as the OS.
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// The image of `module` with `meta`.
pub fn build(module: &[u8], meta: &Meta) -> Result<Image> {
    if module.get(..8) != Some(&WASM_HEADER[..]) {
        bail!("not a Wasm module (it must start with \\0asm and version 1)");
    }
    let tar = plugin_tar(module)?;
    let diff_id = sha256_digest(&tar);
    let layer = Blob::new(LAYER_MEDIA_TYPE, gzip(&tar)?);
    let config = Blob::new(
        CONFIG_MEDIA_TYPE,
        serde_json::to_vec(&ImageConfig {
            architecture: ARCHITECTURE,
            os: OS,
            rootfs: RootFs {
                kind: "layers",
                diff_ids: vec![&diff_id],
            },
        })?,
    );
    let annotations = BTreeMap::from([
        (VERSION, meta.version.as_str()),
        (REVISION, meta.revision.as_str()),
        (SOURCE, meta.source.as_str()),
        (TITLE, meta.title.as_str()),
    ]);
    let manifest = Blob::new(
        MANIFEST_MEDIA_TYPE,
        serde_json::to_vec(&Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE,
            config: Descriptor::of(&config),
            layers: vec![Descriptor::of(&layer)],
            annotations,
        })?,
    );
    let mut entry = Descriptor::of(&manifest);
    entry.annotations.insert(REF_NAME, &meta.tag);
    let index = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: INDEX_MEDIA_TYPE,
        manifests: vec![entry],
    })?;
    Ok(Image {
        layer,
        config,
        manifest,
        index,
        diff_id,
        meta: meta.clone(),
    })
}

impl Image {
    /// The manifest's digest, `sha256:<hex>`: what a registry answers as `Docker-Content-Digest`
    /// and what the fetchers compare `sha256` against (its hex part).
    pub fn manifest_digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Write the OCI image layout into `dir`, replacing a layout already there (so no stale blob
    /// stays behind). Refuses a directory that holds anything but an image layout.
    pub fn write_layout(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            let is_layout = dir.join("oci-layout").is_file();
            let is_empty = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_none();
            if !is_layout && !is_empty {
                bail!(
                    "{} exists and is not an OCI image layout: not replacing it",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the old layout {}", dir.display()))?;
        }
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        for blob in [&self.layer, &self.config, &self.manifest] {
            write(&blobs.join(blob.hex()), &blob.bytes)?;
        }
        write(&dir.join("index.json"), &self.index)?;
        write(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(())
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

pub const USAGE: &str = "usage: inference-router-image [--wasm FILE] [--out DIR] [--revision REV] \
                     [--source URL] [--tag TAG]
  Writes FILE (default dist/inference_router.wasm) as an OCI image layout in DIR (default
  dist/image): the compat variant (plugin.wasm in one tar+gzip layer) that Istio's and Envoy
  Gateway's Wasm image fetchers accept. Prints the manifest digest and the push command.";

/// The command line: parse `args` (without the program name), build, write, report on `out`.
pub fn run(args: &[String], out: &mut dyn Write) -> Result<Image> {
    let mut wasm = PathBuf::from("dist/inference_router.wasm");
    let mut dir = PathBuf::from("dist/image");
    let mut revision = String::new();
    let mut source: Option<String> = None;
    let mut tag: Option<String> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--wasm" => wasm = PathBuf::from(value),
            "--out" => dir = PathBuf::from(value),
            "--revision" => revision = value.clone(),
            "--source" => source = Some(value.clone()),
            "--tag" => tag = Some(value.clone()),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let mut meta = Meta::for_workspace(&revision, source.as_deref());
    if let Some(tag) = tag {
        meta.tag = tag;
    }
    let module = std::fs::read(&wasm).with_context(|| {
        format!(
            "reading the module {} (build it with `make build`)",
            wasm.display()
        )
    })?;
    let image = build(&module, &meta).with_context(|| wasm.display().to_string())?;
    image.write_layout(&dir)?;
    writeln!(
        out,
        "{}: OCI image layout of {} ({PLUGIN_FILE} in one tar+gzip layer, {} bytes), tag {}",
        dir.display(),
        wasm.display(),
        image.layer.bytes.len(),
        meta.tag
    )?;
    writeln!(out, "manifest digest: {}", image.manifest_digest())?;
    writeln!(out, "push: {}", push_command(&dir, &meta.tag))?;
    Ok(image)
}

/// How to push the layout in `dir` (REGISTRY to fill in).
pub fn push_command(dir: &Path, tag: &str) -> String {
    format!(
        "skopeo copy oci:{} docker://REGISTRY/{IMAGE_NAME}:{tag}",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use serde_json::Value;
    use std::io::Read;

    fn module(extra: &[u8]) -> Vec<u8> {
        let mut m = WASM_HEADER.to_vec();
        m.extend_from_slice(extra);
        m
    }

    fn meta() -> Meta {
        Meta {
            version: "9.8.7".to_string(),
            revision: "0123456789abcdef0123456789abcdef01234567".to_string(),
            source: "https://example.invalid/inference-router".to_string(),
            title: IMAGE_NAME.to_string(),
            tag: "9.8.7".to_string(),
        }
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// Every file under `dir`, relative path → bytes.
    fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap().display().to_string();
                    out.insert(rel, std::fs::read(&path).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn the_same_module_gives_the_same_bytes() {
        let m = module(&[7; 100_000]);
        let a = build(&m, &meta()).unwrap();
        let b = build(&m, &meta()).unwrap();
        assert_eq!(a, b);
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        a.write_layout(&da.path().join("image")).unwrap();
        // Written later, elsewhere: mtimes and paths must not leak into any blob.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        b.write_layout(&db.path().join("image")).unwrap();
        assert_eq!(
            tree(&da.path().join("image")),
            tree(&db.path().join("image"))
        );
    }

    #[test]
    fn what_changes_the_digests() {
        let base = build(&module(b"a"), &meta()).unwrap();
        let other_module = build(&module(b"b"), &meta()).unwrap();
        assert_ne!(base.layer.digest, other_module.layer.digest);
        assert_ne!(base.manifest_digest(), other_module.manifest_digest());
        // Another commit, same module: same layer and config, another manifest.
        let other_revision = build(
            &module(b"a"),
            &Meta {
                revision: "unknown".to_string(),
                ..meta()
            },
        )
        .unwrap();
        assert_eq!(base.layer, other_revision.layer);
        assert_eq!(base.config, other_revision.config);
        assert_ne!(base.manifest_digest(), other_revision.manifest_digest());
        // The tag lives in index.json only: the manifest digest does not depend on it.
        let other_tag = build(
            &module(b"a"),
            &Meta {
                tag: "latest".to_string(),
                ..meta()
            },
        )
        .unwrap();
        assert_eq!(base.manifest, other_tag.manifest);
        assert_ne!(base.index, other_tag.index);
    }

    /// The exact bytes for a fixed input, so a change of the tar or gzip writer (or of a
    /// dependency's compressor after a lock file update) that would change every image's digest
    /// is seen. If such a change is intended, update the pins.
    #[test]
    fn digests_are_pinned_for_a_fixed_input() {
        let image = build(&module(&[0x2a; 4096]), &meta()).unwrap();
        assert_eq!(
            image.diff_id,
            "sha256:5153f8087dd0cc2da443d628efa5f9e50f6ee9d7c583af2807ce5f8e48436606",
            "the tar changed"
        );
        assert_eq!(
            image.layer.digest,
            "sha256:9cfe5e8ffa8916b3a91da6ea51d7006dfd8092560079bb1e9b466fdc5bd3b701",
            "the gzip changed"
        );
        assert_eq!(
            image.manifest_digest(),
            "sha256:fcffef5a3e0330073307b6cbaf8e4d0fc137f57f8a10856b79710ff93d30fc0e",
            "the manifest changed"
        );
    }

    #[test]
    fn the_layout_is_an_oci_image_layout_of_the_compat_variant() {
        let m = module(
            &(0..50_000u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<_>>(),
        );
        let image = build(&m, &meta()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("image");
        image.write_layout(&root).unwrap();

        let files = tree(&root);
        let blob = |digest: &str| -> Vec<u8> {
            let hex = digest.strip_prefix("sha256:").unwrap();
            let bytes = files
                .get(&format!("blobs/sha256/{hex}"))
                .unwrap_or_else(|| panic!("no blob {digest}"))
                .clone();
            assert_eq!(sha256_digest(&bytes), digest, "blob content ≠ its name");
            bytes
        };
        assert_eq!(
            json(&files["oci-layout"]),
            serde_json::json!({"imageLayoutVersion": "1.0.0"})
        );
        // Exactly the three blobs, index.json and oci-layout.
        assert_eq!(files.len(), 5, "{:?}", files.keys());

        let index = json(&files["index.json"]);
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(entries[0]["annotations"][REF_NAME], "9.8.7");
        let manifest_digest = entries[0]["digest"].as_str().unwrap();
        assert_eq!(manifest_digest, image.manifest_digest());
        let manifest_bytes = blob(manifest_digest);
        assert_eq!(
            entries[0]["size"].as_u64(),
            Some(manifest_bytes.len() as u64)
        );

        let manifest = json(&manifest_bytes);
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(
            manifest["annotations"],
            serde_json::json!({
                VERSION: "9.8.7",
                REVISION: "0123456789abcdef0123456789abcdef01234567",
                SOURCE: "https://example.invalid/inference-router",
                TITLE: "inference-router",
            })
        );
        assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        let config_bytes = blob(manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(
            manifest["config"]["size"].as_u64(),
            Some(config_bytes.len() as u64)
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        // The compat variant: the last layer is a gzip tar.
        assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
        let layer = blob(layers[0]["digest"].as_str().unwrap());
        assert_eq!(layers[0]["size"].as_u64(), Some(layer.len() as u64));

        // gzip: magic, deflate, no flags (no name, no comment), mtime 0, OS unknown.
        assert_eq!(&layer[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&layer[4..8], &[0, 0, 0, 0]);
        assert_eq!(layer[9], 255);
        let mut tar_bytes = Vec::new();
        GzDecoder::new(&layer[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();

        let config = json(&config_bytes);
        assert_eq!(
            config,
            serde_json::json!({
                "architecture": "wasm",
                "os": "wasi",
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&tar_bytes)]},
            })
        );

        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some(PLUGIN_FILE));
        let h = entry.header();
        assert_eq!(h.entry_type(), tar::EntryType::Regular);
        assert_eq!(
            (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
            (0o644, 0, 0)
        );
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!(h.username().unwrap(), Some(""));
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(content, m);
        drop(entry);
        assert!(entries.next().is_none(), "one entry only");
    }

    #[test]
    fn a_new_layout_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("image");
        let old = build(&module(b"old"), &meta()).unwrap();
        old.write_layout(&root).unwrap();
        let new = build(&module(b"new"), &meta()).unwrap();
        new.write_layout(&root).unwrap();
        let files = tree(&root);
        assert!(!files.contains_key(&format!("blobs/sha256/{}", old.layer.hex())));
        assert!(files.contains_key(&format!("blobs/sha256/{}", new.layer.hex())));
        assert_eq!(files.len(), 5);
    }

    #[test]
    fn refuses_what_it_should_not_touch_or_package() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), "x").unwrap();
        let image = build(&module(b""), &meta()).unwrap();
        let err = image.write_layout(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not an OCI image layout"), "{err}");
        assert!(dir.path().join("precious").is_file());

        let err = build(b"\x7fELF\x02\x01\x01\0", &meta()).unwrap_err();
        assert!(err.to_string().contains("not a Wasm module"), "{err}");
        assert!(build(b"\0asm", &meta()).is_err());
    }

    #[test]
    fn the_command_line_writes_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("m.wasm");
        std::fs::write(&wasm, module(b"cli")).unwrap();
        let out_dir = dir.path().join("image");
        let args: Vec<String> = [
            "--wasm",
            wasm.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--revision",
            "abc123",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut out = Vec::new();
        let image = run(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[1],
            format!("manifest digest: {}", image.manifest_digest())
        );
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            lines[2],
            format!(
                "push: skopeo copy oci:{} docker://REGISTRY/inference-router:{version}",
                out_dir.display()
            )
        );
        assert_eq!(image.meta.revision, "abc123");
        assert_eq!(image.meta.version, version);
        assert_eq!(image.meta.tag, version);
        assert!(out_dir.join("oci-layout").is_file());

        let err = run(&["--bogus".to_string(), "x".to_string()], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("unknown argument"), "{err}");
        let missing = vec!["--wasm".to_string(), "/nonexistent.wasm".to_string()];
        assert!(run(&missing, &mut Vec::new()).is_err());
    }

    #[test]
    fn unknown_revision_and_source() {
        let m = Meta::for_workspace("", None);
        assert_eq!(m.revision, "unknown");
        assert_eq!(m.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(m.title, "inference-router");
        let m = Meta::for_workspace("deadbeef", Some("https://example.invalid/x"));
        assert_eq!(m.revision, "deadbeef");
        assert_eq!(m.source, "https://example.invalid/x");
    }
}
