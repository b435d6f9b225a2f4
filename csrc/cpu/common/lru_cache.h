// The one cache policy of the CPU operators: a small, thread-safe cache of the
// most recently used entries, bounded by a count. Derived data (conv plans) is
// cached under a key with a validity check, so an entry whose source tensors
// were freed or modified is never returned; it ages out like any other.
#pragma once

#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <utility>

namespace sparsemia::cpu {

template <typename Key, typename Value>
class LruCache {
 public:
  explicit LruCache(size_t capacity) : capacity_(capacity) {}

  // The value stored under `key` for which valid(value) holds, now the most
  // recently used; nothing otherwise.
  template <typename Valid>
  std::optional<Value> find(const Key& key, const Valid& valid) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (!(it->first == key) || !valid(it->second)) continue;
      entries_.splice(entries_.begin(), entries_, it);
      return entries_.front().second;
    }
    return std::nullopt;
  }

  // Stores `value` as the most recently used entry, dropping the least
  // recently used one past the capacity.
  void insert(Key key, Value value) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.emplace_front(std::move(key), std::move(value));
    if (entries_.size() > capacity_) entries_.pop_back();
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

 private:
  const size_t capacity_;
  std::mutex mutex_;
  std::list<std::pair<Key, Value>> entries_;
};

}  // namespace sparsemia::cpu
