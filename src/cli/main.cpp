// zerolora command line: thin; each subcommand parses flags and calls the library.
#include <cstdio>
#include <exception>

#include "core/error.h"

int main(int argc, char** argv) {
  std::fprintf(stderr, "usage: zerolora <command> ...\n");
  return 2;
}
