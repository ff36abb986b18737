#include "tokenizer/work_pool.h"

namespace qtrain::tokenizer {

WorkPool::WorkPool(int threads) {
  for (int t = 1; t < threads; ++t) threads_.emplace_back([this] { Worker(); });
}

WorkPool::~WorkPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void WorkPool::Drain() {
  for (size_t k; (k = next_.fetch_add(1)) < n_;) (*fn_)(k);
}

void WorkPool::Run(size_t n, const std::function<void(size_t)>& fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    next_ = 0;
    busy_ = static_cast<int>(threads_.size());
    ++round_;
  }
  start_cv_.notify_all();
  Drain();
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return busy_ == 0; });
  fn_ = nullptr;
}

void WorkPool::Worker() {
  uint64_t seen = 0;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || round_ != seen; });
      if (stop_) return;
      seen = round_;
    }
    Drain();
    {
      std::lock_guard<std::mutex> lock(mu_);
      --busy_;
    }
    done_cv_.notify_all();
  }
}

}  // namespace qtrain::tokenizer
