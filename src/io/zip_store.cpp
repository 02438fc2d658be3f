#include "io/zip_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace zerolora::io {

namespace {

constexpr uint32_t kLocalHeader = 0x04034b50, kCentralHeader = 0x02014b50, kEnd = 0x06054b50;
constexpr uint32_t kEnd64 = 0x06064b50, kEnd64Locator = 0x07064b50;
constexpr size_t kAlign = 64;  // torch aligns record data to 64 bytes (its "FB" padding extra field)

template <typename T>
T get(const std::string& b, size_t at, const std::string& path) {
  core::check(at + sizeof(T) <= b.size(), path, "is not a complete zip archive (a record runs past the end)",
              "the file is truncated or damaged; save it again");
  T v;
  std::memcpy(&v, b.data() + at, sizeof(T));
  return v;
}

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

}  // namespace

uint32_t crc32_zip(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

std::vector<ZipEntry> read_stored_zip(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  core::check(bool(f), path, "cannot be opened", "check the path and its permissions");
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string b = ss.str();
  const std::string fix = "the file is truncated or not a PyTorch zip file (torch.save >= 1.6); save it again";
  // end of central directory: the last signature within the final 64 KiB + 22 bytes (comment at most 64 KiB)
  core::check(b.size() >= 22, path, "is not a zip archive (too short)", fix);
  size_t end = std::string::npos;
  for (size_t i = b.size() - 22 + 1; i-- > 0 && b.size() - i <= 22 + 65535;)
    if (get<uint32_t>(b, i, path) == kEnd) {
      end = i;
      break;
    }
  core::check(end != std::string::npos, path, "is not a zip archive (no end-of-central-directory record)", fix);
  uint64_t count = get<uint16_t>(b, end + 10, path);
  uint64_t cd_offset = get<uint32_t>(b, end + 16, path);
  if (end >= 20 && get<uint32_t>(b, end - 20, path) == kEnd64Locator) {
    const uint64_t e64 = get<uint64_t>(b, end - 20 + 8, path);
    core::check(get<uint32_t>(b, size_t(e64), path) == kEnd64, path, "has a damaged zip64 end record", fix);
    count = get<uint64_t>(b, size_t(e64) + 32, path);
    cd_offset = get<uint64_t>(b, size_t(e64) + 48, path);
  }
  std::vector<ZipEntry> out;
  size_t at = size_t(cd_offset);
  for (uint64_t i = 0; i < count; ++i) {
    core::check(get<uint32_t>(b, at, path) == kCentralHeader, path, "has a damaged zip central directory", fix);
    const uint16_t flags = get<uint16_t>(b, at + 8, path), method = get<uint16_t>(b, at + 10, path);
    const uint32_t crc = get<uint32_t>(b, at + 16, path);
    uint64_t csize = get<uint32_t>(b, at + 20, path), usize = get<uint32_t>(b, at + 24, path);
    const uint16_t name_len = get<uint16_t>(b, at + 28, path), extra_len = get<uint16_t>(b, at + 30, path);
    const uint16_t comment_len = get<uint16_t>(b, at + 32, path);
    uint64_t local = get<uint32_t>(b, at + 42, path);
    core::check(at + 46 + name_len <= b.size(), path, "has a damaged zip central directory", fix);
    ZipEntry e;
    e.name = b.substr(at + 46, name_len);
    // zip64 extra field (id 1): the 64-bit values of the fields that hold 0xFFFFFFFF, in this order
    for (size_t x = at + 46 + name_len; x + 4 <= at + 46 + name_len + extra_len;) {
      const uint16_t id = get<uint16_t>(b, x, path), len = get<uint16_t>(b, x + 2, path);
      if (id == 1) {
        size_t v = x + 4;
        if (usize == 0xFFFFFFFFu) usize = get<uint64_t>(b, v, path), v += 8;
        if (csize == 0xFFFFFFFFu) csize = get<uint64_t>(b, v, path), v += 8;
        if (local == 0xFFFFFFFFu) local = get<uint64_t>(b, v, path), v += 8;
      }
      x += 4 + len;
    }
    core::check(method == 0 && csize == usize, path,
                "entry '" + e.name + "' is compressed (zip method " + std::to_string(method) +
                    "); only stored entries are read, as torch.save writes them",
                "save the file with torch.save (or re-zip it with zip -0)");
    core::check(!(flags & 1), path, "entry '" + e.name + "' is encrypted", "save the file with torch.save");
    core::check(get<uint32_t>(b, size_t(local), path) == kLocalHeader, path,
                "entry '" + e.name + "' has a damaged local header", fix);
    const size_t data_at =
        size_t(local) + 30 + get<uint16_t>(b, size_t(local) + 26, path) + get<uint16_t>(b, size_t(local) + 28, path);
    core::check(data_at + csize <= b.size(), path, "entry '" + e.name + "' runs past the end of the file", fix);
    e.data = b.substr(data_at, size_t(csize));
    core::check(crc32_zip(e.data.data(), e.data.size()) == crc, path, "entry '" + e.name + "' fails its CRC-32 check",
                fix);
    out.push_back(std::move(e));
    at += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

void write_stored_zip(const std::vector<ZipSource>& entries, const std::function<void(const char*, size_t)>& sink,
                      uint64_t zip64_from) {
  uint64_t at = 0;
  auto emit = [&](const std::string& bytes) {
    sink(bytes.data(), bytes.size());
    at += bytes.size();
  };
  std::string central;
  bool any_zip64 = false;
  for (const ZipSource& e : entries) {
    const uint32_t crc = crc32_zip(e.data, e.size);
    const uint64_t local = at;
    const bool zip64 = e.size >= zip64_from || local >= zip64_from;
    any_zip64 |= zip64;
    const size_t zip64_local_extra = zip64 ? 20 : 0;  // id, length, uncompressed, compressed
    // pad the local header's extra field so that the data starts on a 64-byte boundary
    size_t pad = 0;
    const uint64_t unpadded = local + 30 + e.name.size() + zip64_local_extra;
    if (unpadded % kAlign) pad = kAlign - unpadded % kAlign;
    if (pad && pad < 4) pad += kAlign;  // an extra field needs its 4-byte header
    std::string h;
    put<uint32_t>(h, kLocalHeader);
    put<uint16_t>(h, zip64 ? 45 : 20), put<uint16_t>(h, 0), put<uint16_t>(h, 0);  // version, flags, method stored
    put<uint16_t>(h, 0), put<uint16_t>(h, 0x21);                                  // time, date (1980-01-01)
    put<uint32_t>(h, crc);
    put<uint32_t>(h, zip64 ? 0xFFFFFFFFu : uint32_t(e.size)), put<uint32_t>(h, zip64 ? 0xFFFFFFFFu : uint32_t(e.size));
    put<uint16_t>(h, uint16_t(e.name.size())), put<uint16_t>(h, uint16_t(zip64_local_extra + pad));
    h += e.name;
    if (zip64) put<uint16_t>(h, 1), put<uint16_t>(h, 16), put<uint64_t>(h, e.size), put<uint64_t>(h, e.size);
    if (pad) {
      put<uint16_t>(h, 0x4246), put<uint16_t>(h, uint16_t(pad - 4));  // "FB", as torch's writer
      h.append(pad - 4, 'Z');
    }
    emit(h);
    sink(e.data, e.size);
    at += e.size;
    // a zip64 entry has all three (sizes and offset) in its zip64 extra field: miniz (torch's reader) checks a
    // 32-bit size against the offset field, so one without the other is refused there
    const uint16_t central_extra = zip64 ? 4 + 24 : 0;
    put<uint32_t>(central, kCentralHeader);
    put<uint16_t>(central, zip64 ? 45 : 20), put<uint16_t>(central, zip64 ? 45 : 20);
    put<uint16_t>(central, 0), put<uint16_t>(central, 0), put<uint16_t>(central, 0), put<uint16_t>(central, 0x21);
    put<uint32_t>(central, crc);
    put<uint32_t>(central, zip64 ? 0xFFFFFFFFu : uint32_t(e.size));
    put<uint32_t>(central, zip64 ? 0xFFFFFFFFu : uint32_t(e.size));
    put<uint16_t>(central, uint16_t(e.name.size())), put<uint16_t>(central, central_extra), put<uint16_t>(central, 0);
    put<uint16_t>(central, 0), put<uint16_t>(central, 0), put<uint32_t>(central, 0);
    put<uint32_t>(central, zip64 ? 0xFFFFFFFFu : uint32_t(local));
    central += e.name;
    if (zip64) {
      put<uint16_t>(central, 1), put<uint16_t>(central, 24);
      put<uint64_t>(central, e.size), put<uint64_t>(central, e.size), put<uint64_t>(central, local);
    }
  }
  const uint64_t cd_offset = at;
  emit(central);
  const bool end64 = any_zip64 || cd_offset >= zip64_from || central.size() >= zip64_from || entries.size() >= 0xFFFF;
  std::string tail;
  if (end64) {
    const uint64_t end64_offset = at;
    put<uint32_t>(tail, kEnd64), put<uint64_t>(tail, 44);
    put<uint16_t>(tail, 45), put<uint16_t>(tail, 45), put<uint32_t>(tail, 0), put<uint32_t>(tail, 0);
    put<uint64_t>(tail, entries.size()), put<uint64_t>(tail, entries.size());
    put<uint64_t>(tail, central.size()), put<uint64_t>(tail, cd_offset);
    put<uint32_t>(tail, kEnd64Locator), put<uint32_t>(tail, 0), put<uint64_t>(tail, end64_offset),
        put<uint32_t>(tail, 1);
  }
  put<uint32_t>(tail, kEnd);
  put<uint16_t>(tail, 0), put<uint16_t>(tail, 0);
  const uint16_t count = end64 ? 0xFFFF : uint16_t(entries.size());
  put<uint16_t>(tail, count), put<uint16_t>(tail, count);
  put<uint32_t>(tail, end64 ? 0xFFFFFFFFu : uint32_t(central.size()));
  put<uint32_t>(tail, end64 ? 0xFFFFFFFFu : uint32_t(cd_offset));
  put<uint16_t>(tail, 0);
  emit(tail);
}

std::string make_stored_zip(const std::vector<ZipEntry>& entries, uint64_t zip64_from) {
  std::vector<ZipSource> sources;
  for (const ZipEntry& e : entries) sources.push_back({e.name, e.data.data(), e.data.size()});
  std::string out;
  write_stored_zip(
      sources, [&](const char* p, size_t n) { out.append(p, n); }, zip64_from);
  return out;
}

void write_stored_zip_file(const std::string& path, const std::vector<ZipSource>& entries) {
  const std::string fix = "free disk space or check the folder's permissions";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  core::check(fd >= 0, path, std::string("cannot create file: ") + std::strerror(errno), fix);
  uint64_t written = 0;
  try {
    write_stored_zip(entries, [&](const char* p, size_t n) {
      size_t done = 0;
      while (done < n) {
        const ssize_t k = ::write(fd, p + done, n - done);
        if (k < 0 && errno == EINTR) continue;
        core::check(k > 0, path, "write failed after " + std::to_string(written) + " bytes: " + std::strerror(errno),
                    fix);
        done += size_t(k), written += uint64_t(k);
      }
    });
    core::check(::fsync(fd) == 0, path, std::string("fsync failed: ") + std::strerror(errno), fix);
  } catch (...) {
    ::close(fd);
    throw;
  }
  core::check(::close(fd) == 0, path, std::string("close failed: ") + std::strerror(errno), fix);
}

}  // namespace zerolora::io
