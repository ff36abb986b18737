// Minimal leveled logging to stderr: one line per event, with time, level and source location.
//
//   QTRAIN_LOG(INFO) << "worker registered: " << name;
//   QTRAIN_CHECK(ptr != nullptr) << "why it cannot be null";   // aborts: for broken invariants
//   only
//
// The threshold comes from SetMinLogLevel() or the QTRAIN_LOG_LEVEL environment variable
// (DEBUG, INFO, WARNING, ERROR). Library code reports failures as absl::Status, not by logging.
#ifndef QTRAIN_COMMON_LOGGING_H_
#define QTRAIN_COMMON_LOGGING_H_

#include <sstream>
#include <string_view>

namespace qtrain {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Parses "DEBUG", "INFO", "WARNING", "ERROR" (case-insensitive); false if unknown.
bool ParseLogLevel(std::string_view text, LogLevel* level);

namespace internal {

// Collects one log line and writes it (atomically, one write call) when destroyed.
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

// Lets the macros below discard a stream expression in a statement context.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace qtrain

#define QTRAIN_LOG_LEVEL_DEBUG ::qtrain::LogLevel::kDebug
#define QTRAIN_LOG_LEVEL_INFO ::qtrain::LogLevel::kInfo
#define QTRAIN_LOG_LEVEL_WARNING ::qtrain::LogLevel::kWarning
#define QTRAIN_LOG_LEVEL_ERROR ::qtrain::LogLevel::kError
#define QTRAIN_LOG_LEVEL_FATAL ::qtrain::LogLevel::kFatal

#define QTRAIN_LOG(severity)                                                                \
  (QTRAIN_LOG_LEVEL_##severity < ::qtrain::MinLogLevel())                                   \
      ? (void)0                                                                             \
      : ::qtrain::internal::LogVoidify() &                                                  \
            ::qtrain::internal::LogMessage(QTRAIN_LOG_LEVEL_##severity, __FILE__, __LINE__) \
                .stream()

#define QTRAIN_CHECK(cond)                                                                    \
  (cond) ? (void)0                                                                            \
         : ::qtrain::internal::LogVoidify() &                                                 \
               ::qtrain::internal::LogMessage(::qtrain::LogLevel::kFatal, __FILE__, __LINE__) \
                       .stream()                                                              \
                   << "Check failed: " #cond " "

#endif  // QTRAIN_COMMON_LOGGING_H_
