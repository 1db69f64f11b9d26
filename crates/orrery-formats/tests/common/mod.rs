//! Shared helpers for the integration tests: fixture paths, expected values, a tiny pickle
//! writer and a streaming torch-layout ZIP writer (with ZIP64 records) used to build
//! checkpoints at test time, including multi-gigabyte ones.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use orrery_formats::{TensorBytes, WeightSource};
use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

pub fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json"))
        .expect("expected.json (run tools/reference/make_format_fixtures.py)");
    serde_json::from_str(&text).unwrap()
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Checks every tensor listed for `file` in expected.json: names, dtype, shape, values.
pub fn check_values(src: &dyn WeightSource, file: &str) {
    let exp = expected();
    let tensors = exp["files"][file]["tensors"].as_object().unwrap_or_else(|| panic!("no expectations for {file}"));
    let mut names = src.names();
    names.sort();
    let mut want: Vec<String> = tensors.keys().cloned().collect();
    want.sort();
    assert_eq!(names, want, "{file}: tensor names");
    for (name, e) in tensors {
        let info = src.info(name).unwrap();
        assert_eq!(info.dtype.name(), e["dtype"].as_str().unwrap(), "{file}:{name} dtype");
        assert_eq!(info.shape, usizes(&e["shape"]), "{file}:{name} shape");
        let t: TensorBytes = src.load(name).unwrap();
        assert_eq!(t.dtype, info.dtype);
        assert_eq!(t.shape, info.shape);
        assert_eq!(t.as_bytes().len(), info.byte_len, "{file}:{name} byte_len");
        assert_eq!(t.is_zero_copy(), info.zero_copy, "{file}:{name} zero_copy");
        assert_eq!(t.to_f64_vec(), floats(&e["values"]), "{file}:{name} values");
    }
}

// ------------------------------------------------------------------------------------------
// Pickle writer (protocol 2, the subset torch.save emits).

#[derive(Default)]
pub struct Pickler {
    pub out: Vec<u8>,
}

impl Pickler {
    pub fn new() -> Pickler {
        Pickler { out: vec![0x80, 2] }
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.out.extend_from_slice(&[b'K', v as u8]);
        } else if i32::try_from(v).is_ok() {
            self.out.push(b'J');
            self.out.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.out.extend_from_slice(&[0x8a, 8]);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
        self
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
        self
    }
    pub fn mark(&mut self) -> &mut Self {
        self.raw(b"(")
    }
    pub fn tuple(&mut self) -> &mut Self {
        self.raw(b"t")
    }
    pub fn int_tuple(&mut self, v: &[i64]) -> &mut Self {
        self.mark();
        for &x in v {
            self.int(x);
        }
        self.tuple()
    }
    /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', numel), offset, size, stride,
    /// False, OrderedDict())`
    pub fn tensor(&mut self, ty: &str, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.mark().str("storage").global("torch", ty).str(key).str("cpu").int(numel).tuple().raw(b"Q");
        self.int(offset).int_tuple(size).int_tuple(stride).raw(b"\x89");
        self.global("collections", "OrderedDict").raw(b")R");
        self.tuple().raw(b"R")
    }
    pub fn finish(&mut self) -> Vec<u8> {
        self.out.push(b'.');
        std::mem::take(&mut self.out)
    }
}

// ------------------------------------------------------------------------------------------
// CRC-32 (IEEE), slicing-by-8, so multi-gigabyte entries checksum quickly.

pub struct Crc32 {
    tables: Vec<[u32; 256]>,
}

impl Crc32 {
    pub fn new() -> Crc32 {
        let mut tables = vec![[0u32; 256]; 8];
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            tables[0][i as usize] = c;
        }
        for t in 1..8 {
            for i in 0..256 {
                let p = tables[t - 1][i];
                tables[t][i] = (p >> 8) ^ tables[0][(p & 0xFF) as usize];
            }
        }
        Crc32 { tables }
    }

    /// Continues a CRC (pass 0 to start; the value is pre/post-inverted internally).
    pub fn update(&self, crc: u32, data: &[u8]) -> u32 {
        let t = &self.tables;
        let mut c = !crc;
        let mut chunks = data.chunks_exact(8);
        for ch in &mut chunks {
            let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
            let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
            c = t[7][(lo & 0xFF) as usize]
                ^ t[6][((lo >> 8) & 0xFF) as usize]
                ^ t[5][((lo >> 16) & 0xFF) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xFF) as usize]
                ^ t[2][((hi >> 8) & 0xFF) as usize]
                ^ t[1][((hi >> 16) & 0xFF) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            c = t[0][((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
        }
        !c
    }
}

// ------------------------------------------------------------------------------------------
// Torch-layout ZIP writer: stored entries, data aligned to 64 bytes (like torch.save), ZIP64
// extra fields on every central entry and ZIP64 end records, streamed so multi-gigabyte
// storages never sit in memory.

pub struct TorchZipWriter {
    file: File,
    pos: u64,
    central: Vec<u8>,
    count: u64,
    crc: Crc32,
    pub prefix: String,
}

const ALIGN: u64 = 64;

impl TorchZipWriter {
    pub fn create(path: &Path, prefix: &str) -> TorchZipWriter {
        TorchZipWriter {
            file: File::create(path).unwrap(),
            pos: 0,
            central: Vec::new(),
            count: 0,
            crc: Crc32::new(),
            prefix: prefix.to_string(),
        }
    }

    /// Adds `<prefix>/<name>` holding `len` bytes produced by `fill(chunk, offset)` in chunks.
    pub fn add_streamed(&mut self, name: &str, len: u64, mut fill: impl FnMut(&mut [u8], u64)) {
        let full = format!("{}/{}", self.prefix, name);
        let header_at = self.pos;
        // Local header: 30 bytes + name + extra; the extra pads the data start to 64 bytes
        // (an "FB" padding record like torch's) and holds nothing we rely on.
        let base = header_at + 30 + full.len() as u64;
        let mut pad = (ALIGN - (base + 4) % ALIGN) % ALIGN;
        let extra_len = 4 + pad;
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&45u16.to_le_bytes()); // version needed (ZIP64)
        local.extend_from_slice(&0u16.to_le_bytes()); // flags
        local.extend_from_slice(&0u16.to_le_bytes()); // stored
        local.extend_from_slice(&[0, 0, 0x21, 0]); // time, date (1980-01-01)
        local.extend_from_slice(&0u32.to_le_bytes()); // crc, patched below
        let s32 = u32::try_from(len).unwrap_or(u32::MAX);
        local.extend_from_slice(&s32.to_le_bytes());
        local.extend_from_slice(&s32.to_le_bytes());
        local.extend_from_slice(&(full.len() as u16).to_le_bytes());
        local.extend_from_slice(&(extra_len as u16).to_le_bytes());
        local.extend_from_slice(full.as_bytes());
        local.extend_from_slice(b"FB");
        local.extend_from_slice(&(pad as u16).to_le_bytes());
        while pad > 0 {
            local.push(b'Z');
            pad -= 1;
        }
        self.file.write_all(&local).unwrap();
        self.pos += local.len() as u64;
        assert_eq!(self.pos % ALIGN, 0);
        // Data, streamed.
        let mut crc = 0u32;
        let mut buf = vec![0u8; 8 << 20];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            fill(&mut buf[..n], done);
            crc = self.crc.update(crc, &buf[..n]);
            self.file.write_all(&buf[..n]).unwrap();
            done += n as u64;
        }
        self.pos += len;
        // Patch the CRC into the local header.
        self.file.seek(SeekFrom::Start(header_at + 14)).unwrap();
        self.file.write_all(&crc.to_le_bytes()).unwrap();
        self.file.seek(SeekFrom::Start(self.pos)).unwrap();
        // Central entry with ZIP64 sizes and offset.
        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        c.extend_from_slice(&45u16.to_le_bytes());
        c.extend_from_slice(&45u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&[0, 0, 0x21, 0]);
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&u32::MAX.to_le_bytes());
        c.extend_from_slice(&u32::MAX.to_le_bytes());
        c.extend_from_slice(&(full.len() as u16).to_le_bytes());
        c.extend_from_slice(&28u16.to_le_bytes()); // extra: 4 + 3 * 8
        c.extend_from_slice(&0u16.to_le_bytes()); // comment
        c.extend_from_slice(&0u16.to_le_bytes()); // disk
        c.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
        c.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        c.extend_from_slice(&u32::MAX.to_le_bytes()); // offset -> ZIP64
        c.extend_from_slice(full.as_bytes());
        c.extend_from_slice(&1u16.to_le_bytes());
        c.extend_from_slice(&24u16.to_le_bytes());
        c.extend_from_slice(&len.to_le_bytes());
        c.extend_from_slice(&len.to_le_bytes());
        c.extend_from_slice(&header_at.to_le_bytes());
        self.count += 1;
    }

    pub fn add(&mut self, name: &str, data: &[u8]) {
        self.add_streamed(name, data.len() as u64, |chunk, off| {
            let o = off as usize;
            chunk.copy_from_slice(&data[o..o + chunk.len()]);
        });
    }

    /// Writes the central directory and the ZIP64 + classic end records.
    pub fn finish(mut self) {
        let cd_off = self.pos;
        self.file.write_all(&self.central).unwrap();
        let cd_len = self.central.len() as u64;
        let z64 = cd_off + cd_len;
        let mut e = Vec::new();
        e.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        e.extend_from_slice(&44u64.to_le_bytes());
        e.extend_from_slice(&45u16.to_le_bytes());
        e.extend_from_slice(&45u16.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&self.count.to_le_bytes());
        e.extend_from_slice(&self.count.to_le_bytes());
        e.extend_from_slice(&cd_len.to_le_bytes());
        e.extend_from_slice(&cd_off.to_le_bytes());
        e.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&z64.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(&u16::MAX.to_le_bytes());
        e.extend_from_slice(&u16::MAX.to_le_bytes());
        e.extend_from_slice(&u32::MAX.to_le_bytes());
        e.extend_from_slice(&u32::MAX.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        self.file.write_all(&e).unwrap();
        self.file.flush().unwrap();
    }
}

/// Writes a complete small checkpoint: `data.pkl` + storages + the usual side entries.
pub fn write_checkpoint(path: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>)]) {
    let mut w = TorchZipWriter::create(path, "archive");
    w.add("data.pkl", pickle);
    w.add("byteorder", b"little");
    for (k, d) in storages {
        w.add(&format!("data/{k}"), d);
    }
    w.add("version", b"3\n");
    w.finish();
}

/// A fresh temporary directory removed on drop (also when the test panics).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        // Cargo's per-target scratch directory: on the build disk, not a RAM-backed /tmp.
        let p =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("orrery-formats-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Deterministic xorshift64* generator for mutation tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}
