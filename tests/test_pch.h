// The precompiled header of every test binary: the heavy headers most tests include (GoogleTest,
// GoogleMock, absl strings/status, nlohmann::json, the standard library). Compiled once per build
// tree and reused by all tests (cmake/QtrainHelpers.cmake), it saves the parsing of these headers
// in each test file. Only widely used, stable third-party headers belong here.
#ifndef QTRAIN_TESTS_TEST_PCH_H_
#define QTRAIN_TESTS_TEST_PCH_H_

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#endif  // QTRAIN_TESTS_TEST_PCH_H_
