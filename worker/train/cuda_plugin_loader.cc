#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "worker/train/cuda_plugin.h"

namespace qtrain::train {
namespace {

constexpr char kModuleName[] = "libqtrain_cuda_plugin.so";

using AbiFn = int (*)();
using CreateFn = kernels::Backend* (*)(int, char*, size_t);

// The loaded module's entry points; loaded once, never unloaded (backends it made may live until
// the process ends).
struct Module {
  CreateFn create = nullptr;
  std::string path;
};

absl::Mutex module_mu;
Module* loaded ABSL_GUARDED_BY(module_mu) = nullptr;

absl::StatusOr<Module> Open() {
  std::vector<std::string> failures;
  for (const std::string& path : CudaPluginCandidates()) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      failures.push_back(absl::StrCat(path, " (absent)"));
      continue;
    }
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      failures.push_back(absl::StrCat(path, " (", why != nullptr ? why : "dlopen failed", ")"));
      continue;
    }
    auto abi = reinterpret_cast<AbiFn>(::dlsym(handle, "qtrain_cuda_plugin_abi"));
    auto create = reinterpret_cast<CreateFn>(::dlsym(handle, "qtrain_cuda_plugin_create_backend"));
    if (abi == nullptr || create == nullptr) {
      ::dlclose(handle);
      return absl::InternalError(absl::StrCat(
          path, " is not a qtrain CUDA plugin (it lacks ",
          abi == nullptr ? "qtrain_cuda_plugin_abi" : "qtrain_cuda_plugin_create_backend", ")"));
    }
    if (abi() != kCudaPluginAbi) {
      const int theirs = abi();
      ::dlclose(handle);
      return absl::InternalError(absl::StrCat(path, " is a CUDA plugin of ABI ", theirs,
                                              ", this program needs ", kCudaPluginAbi,
                                              ": use the plugin built with it"));
    }
    return Module{create, path};
  }
  return absl::FailedPreconditionError(
      absl::StrCat("world.device cuda: no CUDA plugin (", kModuleName,
                   ", built with QTRAIN_CUDA=ON) was found; tried ", absl::StrJoin(failures, ", "),
                   ". Set QTRAIN_CUDA_PLUGIN to its path, or submit the job (qtrain submit) to "
                   "workers started as qtrain-worker --device cuda"));
}

}  // namespace

std::vector<std::string> CudaPluginCandidates() {
  std::vector<std::string> paths;
  // Set, it is the only one: a plugin named on purpose is never replaced by another.
  if (const char* env = std::getenv("QTRAIN_CUDA_PLUGIN"); env != nullptr && *env != '\0') {
    return {env};
  }
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const std::filesystem::path dir = exe.parent_path();
    paths.push_back((dir / kModuleName).string());
    paths.push_back((dir.parent_path() / "lib" / "qtrain" / kModuleName).string());
  }
  return paths;
}

absl::StatusOr<std::unique_ptr<kernels::Backend>> LoadCudaPluginBackend(int device) {
  if (device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device, " is negative"));
  }
  CreateFn create = nullptr;
  std::string path;
  {
    absl::MutexLock lock(&module_mu);
    if (loaded == nullptr) {
      absl::StatusOr<Module> opened = Open();
      if (!opened.ok()) return opened.status();
      loaded = new Module(*std::move(opened));
    }
    create = loaded->create;
    path = loaded->path;
  }
  char error[1024] = {0};
  std::unique_ptr<kernels::Backend> backend(create(device, error, sizeof(error)));
  if (backend == nullptr) {
    error[sizeof(error) - 1] = '\0';
    return absl::FailedPreconditionError(
        absl::StrCat("world.device cuda: ", error[0] != '\0' ? error : "no CUDA backend",
                     " (plugin ", path, ")"));
  }
  return backend;
}

}  // namespace qtrain::train
