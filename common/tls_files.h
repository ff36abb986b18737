// Reading the PEM files of the TLS flags, checked with OpenSSL when they are read, so that a
// wrong file is an error at start naming the flag instead of a handshake failure on every call.
// Errors never quote a file's content.
#ifndef QTRAIN_COMMON_TLS_FILES_H_
#define QTRAIN_COMMON_TLS_FILES_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qtrain {

// One or more PEM certificates (a chain or a CA bundle). INVALID_ARGUMENT naming `flag` and
// `path` when the file cannot be read, holds no certificate, or its first certificate has
// expired or is not valid yet.
absl::StatusOr<std::string> ReadCertificateFile(std::string_view flag, const std::string& path);

// An unencrypted PEM private key. INVALID_ARGUMENT naming `flag` and `path` when the file cannot
// be read or holds no usable key (an encrypted key included: daemons cannot ask for a password).
absl::StatusOr<std::string> ReadPrivateKeyFile(std::string_view flag, const std::string& path);

// INVALID_ARGUMENT when the key is not the one of the first certificate of `cert_pem`.
absl::Status CheckKeyMatchesCertificate(std::string_view cert_flag, const std::string& cert_pem,
                                        std::string_view key_flag, const std::string& key_pem);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_TLS_FILES_H_
