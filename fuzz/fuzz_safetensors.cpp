// safetensors header and layout validation (io::SafetensorsFile::open over an in-memory file).
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("zerolora-fuzz.safetensors", 0);
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != ssize_t(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  ZL_FUZZ_BODY({
    auto f = zerolora::io::SafetensorsFile::open(path);
    for (const auto& [name, info] : f->tensors()) (void)name, (void)info.nbytes;
  });
  return 0;
}
