// SignalPipe: termination signals (SIGTERM, SIGINT) taken by a handler that writes their number
// to a pipe, which one thread waits on.
//
// Why not a blocked mask and sigtimedwait: a mask only reaches threads started after it is set,
// and libraries start threads before main() (OpenBLAS starts its pool when it is loaded). A
// process-directed signal goes to any thread that does not block it, so with such a thread the
// default action (termination) would run whenever the waiting thread was not inside
// sigtimedwait. A handler runs in whichever thread the kernel picks and only writes one byte.
#ifndef QTRAIN_COMMON_SIGNAL_PIPE_H_
#define QTRAIN_COMMON_SIGNAL_PIPE_H_

#include <signal.h>

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace qtrain {

class SignalPipe {
 public:
  // Installs the handler for `signals` (SA_RESTART; the previous dispositions come back when the
  // SignalPipe is destroyed). One SignalPipe per process at a time: a second Install while one
  // exists is FAILED_PRECONDITION. In a forked child the handler does nothing (it checks the
  // pid), so a signal between fork and exec is not taken for the parent's.
  static absl::StatusOr<std::unique_ptr<SignalPipe>> Install(std::vector<int> signals = {SIGTERM,
                                                                                         SIGINT});
  ~SignalPipe();
  SignalPipe(const SignalPipe&) = delete;
  SignalPipe& operator=(const SignalPipe&) = delete;

  // The next signal received (in order, none lost up to the pipe's capacity), or nullopt once
  // `timeout` passed without one. absl::InfiniteDuration() waits for as long as it takes.
  std::optional<int> Wait(absl::Duration timeout);

 private:
  SignalPipe(int read_fd, std::vector<int> signals, std::vector<struct sigaction> previous);

  int read_fd_;
  std::vector<int> signals_;
  std::vector<struct sigaction> previous_;  // one per signal
};

}  // namespace qtrain

#endif  // QTRAIN_COMMON_SIGNAL_PIPE_H_
