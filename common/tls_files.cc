#include "common/tls_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace qtrain {
namespace {

constexpr size_t kMaxPemFileBytes = 1 << 20;

absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

// Never prompts: an encrypted key simply fails to load.
int NoPassword(char*, int, int, void*) { return -1; }

BioPtr MemoryBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

X509Ptr FirstCertificate(const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  X509Ptr cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, NoPassword, nullptr) : nullptr);
  ERR_clear_error();
  return cert;
}

PkeyPtr PrivateKey(const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  PkeyPtr key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr) : nullptr);
  ERR_clear_error();
  return key;
}

absl::Status Invalid(std::string_view flag, const std::string& path, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(Av(flag), " ", path, ": ", why));
}

absl::StatusOr<std::string> ReadPem(std::string_view flag, const std::string& path) {
  absl::StatusOr<std::string> pem = ReadFileToString(path, kMaxPemFileBytes);
  if (!pem.ok()) return Invalid(flag, path, pem.status().message());
  if (!absl::StrContains(*pem, "-----BEGIN ")) {
    return Invalid(flag, path, "not a PEM file (no \"-----BEGIN\" line)");
  }
  return pem;
}

}  // namespace

absl::StatusOr<std::string> ReadCertificateFile(std::string_view flag, const std::string& path) {
  absl::StatusOr<std::string> pem = ReadPem(flag, path);
  if (!pem.ok()) return pem.status();
  X509Ptr cert = FirstCertificate(*pem);
  if (cert == nullptr) return Invalid(flag, path, "holds no readable PEM certificate");
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) <= 0) {
    return Invalid(flag, path, "the certificate has expired");
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert.get())) > 0) {
    return Invalid(flag, path, "the certificate is not valid yet (check the clock)");
  }
  return pem;
}

absl::StatusOr<std::string> ReadPrivateKeyFile(std::string_view flag, const std::string& path) {
  absl::StatusOr<std::string> pem = ReadPem(flag, path);
  if (!pem.ok()) return pem.status();
  if (PrivateKey(*pem) == nullptr) {
    return Invalid(flag, path, "holds no readable unencrypted PEM private key");
  }
  return pem;
}

absl::Status CheckKeyMatchesCertificate(std::string_view cert_flag, const std::string& cert_pem,
                                        std::string_view key_flag, const std::string& key_pem) {
  X509Ptr cert = FirstCertificate(cert_pem);
  PkeyPtr key = PrivateKey(key_pem);
  const bool match =
      cert != nullptr && key != nullptr && X509_check_private_key(cert.get(), key.get()) == 1;
  ERR_clear_error();
  if (!match) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the key of ", Av(key_flag), " is not the one of the certificate of ", Av(cert_flag)));
  }
  return absl::OkStatus();
}

}  // namespace qtrain
