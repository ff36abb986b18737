// A fixed set of threads that run rounds of indexed work items. Threads live as long as the
// pool, so their thread-local state (the tokenizer's piece cache) stays warm across rounds.
#ifndef QTRAIN_TOKENIZER_WORK_POOL_H_
#define QTRAIN_TOKENIZER_WORK_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace qtrain::tokenizer {

class WorkPool {
 public:
  // `threads` in all, the calling thread included.
  explicit WorkPool(int threads);
  ~WorkPool();
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Calls fn(0) .. fn(n - 1), spread over the threads; returns when all have returned.
  void Run(size_t n, const std::function<void(size_t)>& fn);

 private:
  void Worker();
  void Drain();

  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  uint64_t round_ = 0;
  int busy_ = 0;
  bool stop_ = false;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> next_{0};
  std::vector<std::thread> threads_;
};

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_WORK_POOL_H_
