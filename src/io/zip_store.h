// Uncompressed ("stored") zip archives, the container of PyTorch's .pt/.pth files (torch.save since 1.6
// writes every record stored, data records aligned to 64 bytes). Reading refuses compressed entries with an
// error naming the file and the entry; zip64 end records and sizes are understood (torch writes them for
// large files). Writing produces what torch.load reads: stored entries, CRC-32, 64-byte aligned data, zip64
// records past 4 GiB.
#pragma once
#include <cstdint>
#include <functional>
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

// An entry to write: name and bytes (not owned).
struct ZipSource {
  std::string name;
  const char* data = nullptr;
  size_t size = 0;
};

// Writes the archive of these entries (in this order) to a sink, entry data in place (no copy). An entry or
// offset at or past zip64_from bytes gets zip64 sizes/offsets and the archive zip64 end records (torch and
// Python's zipfile read them); 0xFFFFFFFF is where the 32-bit fields end, smaller values only for tests.
void write_stored_zip(const std::vector<ZipSource>& entries, const std::function<void(const char*, size_t)>& sink,
                      uint64_t zip64_from = 0xFFFFFFFFu);
// The same into a file, fsynced (errors name the path: disk full, permissions).
void write_stored_zip_file(const std::string& path, const std::vector<ZipSource>& entries);
// The same as bytes.
std::string make_stored_zip(const std::vector<ZipEntry>& entries, uint64_t zip64_from = 0xFFFFFFFFu);

}  // namespace zerolora::io
