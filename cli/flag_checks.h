// CLI11 checks for file flags, so that a bad path is named when the flags are parsed.
#ifndef QTRAIN_CLI_FLAG_CHECKS_H_
#define QTRAIN_CLI_FLAG_CHECKS_H_

#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace qtrain::cli {

// A regular file (or a symlink to one). CLI11's ExistingFile lets through what no reader
// accepts: FIFOs (opening one blocks), devices, sockets; this names what the path is.
inline CLI::Validator RegularFileCheck() {
  return CLI::Validator(
      [](std::string& path) -> std::string {
        if (path.empty()) return "the file name is empty";
        const std::string kind = DescribeFileType(path);
        if (kind == "a regular file") return "";
        if (kind == "missing") return absl::StrCat(path, ": no such file");
        if (kind.starts_with("a ")) return absl::StrCat(path, " is ", kind, ", not a regular file");
        return absl::StrCat(path, ": ", kind);  // stat failed: the reason
      },
      "FILE");
}

// A value that is not "" (an empty path would otherwise mean the current directory).
inline CLI::Validator NonEmptyCheck() {
  return CLI::Validator(
      [](std::string& value) -> std::string { return value.empty() ? "the value is empty" : ""; },
      "");
}

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_FLAG_CHECKS_H_
