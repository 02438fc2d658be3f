// Uncompressed ("stored") zip archives, the container of PyTorch's .pt/.pth files (torch.save since 1.6
// writes every record stored, data records aligned to 64 bytes). Reading refuses compressed entries with an
// error naming the file and the entry; zip64 end records and sizes are understood (torch writes them for
// large files). Writing produces what torch.load reads: stored entries, CRC-32, 64-byte aligned data.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace zerolora::io {

// The zip/gzip CRC-32 (reflected polynomial 0xEDB88320).
uint32_t crc32_zip(const void* data, size_t size, uint32_t crc = 0);

struct ZipEntry {
  std::string name;
  std::string data;
};

// Every entry of the archive at path, in central-directory order, CRCs checked. Errors are core::Error
// naming path (and the entry).
std::vector<ZipEntry> read_stored_zip(const std::string& path);

// The archive bytes for these entries (in this order).
std::string make_stored_zip(const std::vector<ZipEntry>& entries);

}  // namespace zerolora::io
