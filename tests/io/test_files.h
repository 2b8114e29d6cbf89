// Temporary files for tests, removed on destruction.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <string>

namespace multisnap::testing {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/multisnap-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::string cmd = "rm -rf '" + path_ + "'"; (void)!system(cmd.c_str()); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace multisnap::testing
