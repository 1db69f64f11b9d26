//! A minimal, read-only ZIP reader for PyTorch checkpoints.
//!
//! `torch.save` (since 1.6) writes an uncompressed ("stored") ZIP archive, aligning each
//! storage's data to 64 bytes with padding in the local header's extra field. We only need:
//! the end-of-central-directory record (and its ZIP64 variant for files past 4 GB), the
//! central directory (names, sizes, local header offsets), and each local header to find
//! where an entry's data actually starts. Compressed entries are refused (mapping them
//! without copying is impossible, and torch never writes them); data is never decompressed,
//! and CRCs are not checked because that would mean reading every byte of a multi-gigabyte
//! file at open — the whole point is to touch only the tensors that get loaded.
//!
//! Everything is parsed from a `&[u8]` (normally the file's memory map) through a
//! bounds-checked cursor with checked arithmetic, so corrupt archives produce errors.

use std::collections::HashMap;
use std::ops::Range;

use crate::reader::Reader;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const MAX_COMMENT: usize = 0xFFFF;

/// One central-directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    /// 0 = stored; anything else is a compression method we refuse to read.
    pub method: u16,
    pub flags: u16,
    pub compressed_size: u64,
    pub size: u64,
    pub local_header_offset: u64,
}

/// Why an archive or entry could not be read (the caller adds the file path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZipError {
    Invalid { entry: Option<String>, detail: String },
    Compressed { entry: String, method: u16 },
}

fn bad(detail: impl Into<String>) -> ZipError {
    ZipError::Invalid { entry: None, detail: detail.into() }
}

fn bad_entry(entry: &str, detail: impl Into<String>) -> ZipError {
    ZipError::Invalid { entry: Some(entry.to_string()), detail: detail.into() }
}

/// The central directory of an archive. It does not borrow the bytes; methods that read data
/// take them again, so it can live next to the map it indexes.
#[derive(Clone, Debug, Default)]
pub struct ZipArchive {
    entries: Vec<ZipEntry>,
    by_name: HashMap<String, usize>,
}

struct Eocd {
    entries: u64,
    cd_size: u64,
    cd_offset: u64,
}

fn find_eocd(data: &[u8]) -> Result<(usize, Eocd), ZipError> {
    if data.len() < EOCD_LEN {
        return Err(bad(format!("file is {} bytes, too short to be a zip archive (truncated?)", data.len())));
    }
    let last = data.len() - EOCD_LEN;
    let first = last.saturating_sub(MAX_COMMENT);
    let mut fallback = None;
    for pos in (first..=last).rev() {
        let mut r = Reader::at(data, pos).ok_or_else(|| bad("internal bounds"))?;
        if r.u32() != Some(EOCD_SIG) {
            continue;
        }
        let Some(fields) = r.array::<18>() else {
            continue;
        };
        let comment_len = u16::from_le_bytes([fields[16], fields[17]]) as usize;
        let end = pos + EOCD_LEN + comment_len;
        if end == data.len() {
            return Ok((pos, parse_eocd(&fields)?));
        }
        if end < data.len() && fallback.is_none() {
            fallback = Some(pos);
        }
    }
    match fallback {
        Some(pos) => {
            let mut r = Reader::at(data, pos + 4).ok_or_else(|| bad("internal bounds"))?;
            let fields = r.array::<18>().ok_or_else(|| bad("truncated end of central directory"))?;
            Ok((pos, parse_eocd(&fields)?))
        }
        None => Err(bad("no end-of-central-directory record found: not a zip archive, or the file is truncated \
             (incomplete download?)")),
    }
}

fn parse_eocd(f: &[u8; 18]) -> Result<Eocd, ZipError> {
    let disk = u16::from_le_bytes([f[0], f[1]]);
    let cd_disk = u16::from_le_bytes([f[2], f[3]]);
    let entries = u16::from_le_bytes([f[6], f[7]]);
    let cd_size = u32::from_le_bytes([f[8], f[9], f[10], f[11]]);
    let cd_offset = u32::from_le_bytes([f[12], f[13], f[14], f[15]]);
    if (disk != 0 && disk != 0xFFFF) || (cd_disk != 0 && cd_disk != 0xFFFF) {
        return Err(bad("multi-volume (split) zip archives are not supported"));
    }
    Ok(Eocd { entries: entries as u64, cd_size: cd_size as u64, cd_offset: cd_offset as u64 })
}

fn read_zip64_eocd(data: &[u8], eocd_pos: usize) -> Result<Option<Eocd>, ZipError> {
    let Some(loc_pos) = eocd_pos.checked_sub(20) else {
        return Ok(None);
    };
    let mut r = Reader::at(data, loc_pos).ok_or_else(|| bad("internal bounds"))?;
    if r.u32() != Some(ZIP64_LOCATOR_SIG) {
        return Ok(None);
    }
    let _disk = r.u32().ok_or_else(|| bad("truncated ZIP64 locator"))?;
    let off = r.u64().ok_or_else(|| bad("truncated ZIP64 locator"))?;
    let off = usize::try_from(off).ok().filter(|&o| o < loc_pos).ok_or_else(|| {
        bad(format!("ZIP64 end-of-central-directory offset {off} is outside the file (corrupt or truncated)"))
    })?;
    let mut r = Reader::at(data, off).ok_or_else(|| bad("internal bounds"))?;
    if r.u32() != Some(ZIP64_EOCD_SIG) {
        return Err(bad(format!("no ZIP64 end-of-central-directory record at offset {off} (corrupt archive)")));
    }
    let t = || bad("truncated ZIP64 end-of-central-directory record");
    let _size = r.u64().ok_or_else(t)?;
    let _made = r.u16().ok_or_else(t)?;
    let _need = r.u16().ok_or_else(t)?;
    let disk = r.u32().ok_or_else(t)?;
    let cd_disk = r.u32().ok_or_else(t)?;
    let _entries_disk = r.u64().ok_or_else(t)?;
    let entries = r.u64().ok_or_else(t)?;
    let cd_size = r.u64().ok_or_else(t)?;
    let cd_offset = r.u64().ok_or_else(t)?;
    if disk != 0 || cd_disk != 0 {
        return Err(bad("multi-volume (split) zip archives are not supported"));
    }
    Ok(Some(Eocd { entries, cd_size, cd_offset }))
}

impl ZipArchive {
    /// Reads the central directory of the archive in `data`.
    pub fn parse(data: &[u8]) -> Result<ZipArchive, ZipError> {
        let (eocd_pos, mut eocd) = find_eocd(data)?;
        if let Some(z) = read_zip64_eocd(data, eocd_pos)? {
            eocd = z;
        } else if eocd.entries == 0xFFFF || eocd.cd_size == 0xFFFF_FFFF || eocd.cd_offset == 0xFFFF_FFFF {
            return Err(bad("end-of-central-directory needs ZIP64 records, but there are none (corrupt archive)"));
        }
        let cd_start = usize::try_from(eocd.cd_offset).map_err(|_| bad("central directory offset overflows"))?;
        let cd_len = usize::try_from(eocd.cd_size).map_err(|_| bad("central directory size overflows"))?;
        let cd_end = cd_start.checked_add(cd_len).filter(|&e| e <= data.len()).ok_or_else(|| {
            bad(format!(
                "central directory ({} bytes at offset {}) lies outside the {}-byte file (truncated?)",
                eocd.cd_size,
                eocd.cd_offset,
                data.len()
            ))
        })?;
        let cd = &data[cd_start..cd_end];
        let mut r = Reader::new(cd);
        let mut archive = ZipArchive::default();
        // Each entry consumes at least 46 bytes of `cd`, so this loop is bounded by the file
        // size whatever the (untrusted) count says; nothing is preallocated from the count.
        let mut i = 0u64;
        while i < eocd.entries {
            let entry = read_central_entry(&mut r, i)?;
            if archive.by_name.contains_key(&entry.name) {
                return Err(bad_entry(&entry.name, "appears twice in the central directory (ambiguous archive)"));
            }
            archive.by_name.insert(entry.name.clone(), archive.entries.len());
            archive.entries.push(entry);
            i += 1;
        }
        Ok(archive)
    }

    pub fn entries(&self) -> &[ZipEntry] {
        &self.entries
    }

    pub fn find(&self, name: &str) -> Option<&ZipEntry> {
        self.entries.get(*self.by_name.get(name)?)
    }

    /// The byte range of a stored entry's data within `data`, found through its local header.
    pub fn data_range(&self, data: &[u8], entry: &ZipEntry) -> Result<Range<usize>, ZipError> {
        if entry.flags & 1 != 0 {
            return Err(bad_entry(&entry.name, "is encrypted; encrypted archives are not supported"));
        }
        if entry.method != 0 {
            return Err(ZipError::Compressed { entry: entry.name.clone(), method: entry.method });
        }
        if entry.compressed_size != entry.size {
            return Err(bad_entry(
                &entry.name,
                format!(
                    "is stored but its compressed size {} differs from its size {} (corrupt archive)",
                    entry.compressed_size, entry.size
                ),
            ));
        }
        let off = usize::try_from(entry.local_header_offset)
            .map_err(|_| bad_entry(&entry.name, "local header offset overflows"))?;
        let mut r = Reader::at(data, off).ok_or_else(|| {
            bad_entry(&entry.name, format!("local header offset {off} is past the end of the file (truncated?)"))
        })?;
        let t = || bad_entry(&entry.name, "truncated local header (truncated file?)");
        if r.u32().ok_or_else(t)? != LOCAL_SIG {
            return Err(bad_entry(&entry.name, format!("no local file header at offset {off} (corrupt archive)")));
        }
        r.skip(22).ok_or_else(t)?;
        let name_len = r.u16().ok_or_else(t)? as usize;
        let extra_len = r.u16().ok_or_else(t)? as usize;
        let name = r.bytes(name_len).ok_or_else(t)?;
        if name != entry.name.as_bytes() {
            return Err(bad_entry(
                &entry.name,
                format!("local header names '{}' instead (corrupt archive)", String::from_utf8_lossy(name)),
            ));
        }
        r.skip(extra_len).ok_or_else(t)?;
        let start = r.pos();
        let len = usize::try_from(entry.size).map_err(|_| bad_entry(&entry.name, "size overflows"))?;
        let end = start.checked_add(len).filter(|&e| e <= data.len()).ok_or_else(|| {
            bad_entry(
                &entry.name,
                format!(
                    "data ({len} bytes at offset {start}) runs past the end of the {}-byte file (truncated download?)",
                    data.len()
                ),
            )
        })?;
        Ok(start..end)
    }

    /// The bytes of a stored entry.
    pub fn read<'a>(&self, data: &'a [u8], entry: &ZipEntry) -> Result<&'a [u8], ZipError> {
        let r = self.data_range(data, entry)?;
        Ok(&data[r])
    }
}

fn read_central_entry(r: &mut Reader<'_>, index: u64) -> Result<ZipEntry, ZipError> {
    let t = || bad(format!("central directory entry {index} is truncated (corrupt archive)"));
    if r.u32().ok_or_else(t)? != CENTRAL_SIG {
        return Err(bad(format!("central directory entry {index} has a bad signature (corrupt archive)")));
    }
    let _made = r.u16().ok_or_else(t)?;
    let _need = r.u16().ok_or_else(t)?;
    let flags = r.u16().ok_or_else(t)?;
    let method = r.u16().ok_or_else(t)?;
    let _time = r.u16().ok_or_else(t)?;
    let _date = r.u16().ok_or_else(t)?;
    let _crc = r.u32().ok_or_else(t)?;
    let csize32 = r.u32().ok_or_else(t)?;
    let size32 = r.u32().ok_or_else(t)?;
    let name_len = r.u16().ok_or_else(t)? as usize;
    let extra_len = r.u16().ok_or_else(t)? as usize;
    let comment_len = r.u16().ok_or_else(t)? as usize;
    let disk16 = r.u16().ok_or_else(t)?;
    let _int_attr = r.u16().ok_or_else(t)?;
    let _ext_attr = r.u32().ok_or_else(t)?;
    let offset32 = r.u32().ok_or_else(t)?;
    let name = String::from_utf8_lossy(r.bytes(name_len).ok_or_else(t)?).into_owned();
    let extra = r.bytes(extra_len).ok_or_else(t)?;
    r.skip(comment_len).ok_or_else(t)?;

    let mut size = size32 as u64;
    let mut csize = csize32 as u64;
    let mut offset = offset32 as u64;
    let mut disk = disk16 as u32;
    let need64 = size32 == u32::MAX || csize32 == u32::MAX || offset32 == u32::MAX || disk16 == u16::MAX;
    if need64 {
        let mut x = Reader::new(extra);
        let mut found = false;
        while x.remaining() >= 4 {
            let (Some(id), Some(len)) = (x.u16(), x.u16()) else {
                break;
            };
            let Some(body) = x.bytes(len as usize) else {
                return Err(bad_entry(&name, "extra field runs past its declared length (corrupt archive)"));
            };
            if id != 1 {
                continue;
            }
            found = true;
            let mut b = Reader::new(body);
            let t64 = || bad_entry(&name, "ZIP64 extra field is too short (corrupt archive)");
            if size32 == u32::MAX {
                size = b.u64().ok_or_else(t64)?;
            }
            if csize32 == u32::MAX {
                csize = b.u64().ok_or_else(t64)?;
            }
            if offset32 == u32::MAX {
                offset = b.u64().ok_or_else(t64)?;
            }
            if disk16 == u16::MAX {
                disk = b.u32().ok_or_else(t64)?;
            }
            break;
        }
        if !found {
            return Err(bad_entry(
                &name,
                "has 0xFFFFFFFF size/offset fields but no ZIP64 extra field (corrupt archive)",
            ));
        }
    }
    if disk != 0 {
        return Err(bad_entry(&name, "lives on another volume; split archives are not supported"));
    }
    Ok(ZipEntry { name, method, flags, compressed_size: csize, size, local_header_offset: offset })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a stored zip (optionally with ZIP64 records everywhere) for tests.
    pub(crate) fn build_zip(entries: &[(&str, &[u8])], zip64: bool, method: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let off = out.len() as u64;
            out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0]);
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 8]); // time, date, crc
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&3u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&[0; 3]); // padding extra (ignored)
            out.extend_from_slice(data);
            central.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            central.extend_from_slice(&[45, 0, 45, 0, 0, 0]);
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 8]);
            let (s32, o32) = if zip64 { (u32::MAX, u32::MAX) } else { (data.len() as u32, off as u32) };
            central.extend_from_slice(&s32.to_le_bytes());
            central.extend_from_slice(&s32.to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&(if zip64 { 28u16 } else { 0 }).to_le_bytes());
            central.extend_from_slice(&[0; 6]); // comment len, disk, internal attrs
            central.extend_from_slice(&[0; 4]); // external attrs
            central.extend_from_slice(&o32.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
            if zip64 {
                central.extend_from_slice(&1u16.to_le_bytes());
                central.extend_from_slice(&24u16.to_le_bytes());
                central.extend_from_slice(&(data.len() as u64).to_le_bytes());
                central.extend_from_slice(&(data.len() as u64).to_le_bytes());
                central.extend_from_slice(&off.to_le_bytes());
            }
        }
        let cd_off = out.len() as u64;
        out.extend_from_slice(&central);
        let n = entries.len() as u64;
        if zip64 {
            let z = out.len() as u64;
            out.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(central.len() as u64).to_le_bytes());
            out.extend_from_slice(&cd_off.to_le_bytes());
            out.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&z.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        out.extend_from_slice(&EOCD_SIG.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let n16 = if zip64 { u16::MAX } else { n as u16 };
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&n16.to_le_bytes());
        let (cs, co) = if zip64 { (u32::MAX, u32::MAX) } else { (central.len() as u32, cd_off as u32) };
        out.extend_from_slice(&cs.to_le_bytes());
        out.extend_from_slice(&co.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    #[test]
    fn reads_plain_and_zip64() {
        for zip64 in [false, true] {
            let z = build_zip(&[("a/data.pkl", b"hello"), ("a/data/0", b"\x01\x02")], zip64, 0);
            let ar = ZipArchive::parse(&z).unwrap();
            assert_eq!(ar.entries().len(), 2);
            let e = ar.find("a/data.pkl").unwrap();
            assert_eq!(ar.read(&z, e).unwrap(), b"hello");
            assert_eq!(ar.read(&z, ar.find("a/data/0").unwrap()).unwrap(), b"\x01\x02");
        }
    }

    #[test]
    fn refuses_compressed_entries_by_name() {
        let z = build_zip(&[("a/data.pkl", b"hello")], false, 8);
        let ar = ZipArchive::parse(&z).unwrap();
        let e = ar.find("a/data.pkl").unwrap();
        assert_eq!(ar.read(&z, e).unwrap_err(), ZipError::Compressed { entry: "a/data.pkl".into(), method: 8 });
    }

    #[test]
    fn truncations_never_panic() {
        let z = build_zip(&[("a/data.pkl", b"hello"), ("a/data/0", b"\x01\x02")], true, 0);
        for n in 0..z.len() {
            if let Ok(ar) = ZipArchive::parse(&z[..n]) {
                for e in ar.entries() {
                    let _ = ar.read(&z[..n], e);
                }
            }
        }
    }
}
