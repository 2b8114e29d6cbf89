// libFuzzer target for control request handling: the input is split into
// lines and each goes through serve_line() (depth check, JSON parsing,
// request checks) to a handler that decodes every command's fields the
// way the Daemon does (control/requests.h, control/fields.h) and answers
// with what it decoded. The real Daemon handler needs an engine, an NBD
// server and files, so it is not used here.
//
// Crashes: any exception out of the field layer (the handler traps), and
// any answer that is not exactly one line holding a JSON object with a
// boolean "ok" (and an error object when ok is false). Each line also goes
// to the client's snapshot-list reader (control/snapshot_list.h), which
// must not throw and must not call an answer ok that does not say so.
//
//   CXX=clang++ cmake -S . -B build-fuzz -DMULTISNAP_FUZZ=ON -DMULTISNAP_TESTS=OFF
//   -DMULTISNAP_BENCH=OFF ninja -C build-fuzz control_fuzz build-fuzz/tests/fuzz/control_fuzz
//   -max_total_time=60 tests/fuzz/corpus/control
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "control/control.h"
#include "control/fields.h"
#include "control/requests.h"
#include "control/snapshot_list.h"
#include "util/log.h"

namespace multisnap::control {
namespace {

class StringWriter : public Writer {
 public:
  bool write(std::string_view bytes) override {
    text.append(bytes);
    return true;
  }
  std::string text;
};

Json ref_json(const SnapshotRef& ref) {
  return ref.id ? Json(*ref.id) : Json(ref.name);
}

std::optional<Json> handle(const Json& req, Writer& out) {
  try {
    const std::string& cmd = req.at("command").get_ref<const std::string&>();
    if (cmd == "ping") return Json{{"ok", true}, {"version", "fuzz"}};
    if (cmd == "status") return Json{{"ok", true}, {"status", Json::object()}};
    if (cmd == "snapshot-create") {
      auto args = parse_snapshot_create(req);
      if (!args.is_ok()) return error_answer(args.status());
      return Json{
          {"ok", true},
          {"snapshot",
           {{"id", 1}, {"name", args->name}, {"of", args->of ? ref_json(*args->of) : Json(nullptr)}}}};
    }
    if (cmd == "snapshot-delete") {
      auto args = parse_snapshot_delete(req);
      if (!args.is_ok()) return error_answer(args.status());
      Json deleted = Json::array();
      for (const SnapshotRef& ref : args->snapshots) {
        if (!ref.id)
          return error_answer(make_error(Code::kNotFound, "there is no snapshot '{}'", quote_for_message(ref.name)));
        deleted.push_back(*ref.id);
      }
      return Json{{"ok", true},
                  {"deleted", args->batch ? deleted : deleted[0]},
                  {"disconnected", args->force ? 1 : 0}};
    }
    if (cmd == "snapshot-list") {
      // The Daemon's streamed shape; an "x-fail" field makes it fail
      // half-way, as a failing page would.
      auto fail = bool_or(req, "x-fail", false);
      if (!fail.is_ok()) return error_answer(fail.status());
      out.write("{\"snapshots\":[");
      out.write(to_text(Json{{"id", 1}, {"name", nullptr}}));
      if (*fail) {
        Json e = error_answer(make_error(Code::kIoError, "page failed"))["error"];
        out.write("],\"ok\":false,\"error\":" + to_text(e) + "}\n");
      } else {
        out.write("],\"ok\":true}\n");
      }
      return std::nullopt;
    }
    return error_answer(
        make_error(Code::kInvalidArgument, "unknown command '{}'", quote_for_message(cmd)));
  } catch (...) {
    __builtin_trap();  // the field layer must never throw
  }
}

void check_answer(const std::string& text) {
  if (text.empty() || text.back() != '\n' || text.find('\n') != text.size() - 1) __builtin_trap();
  Json a = Json::parse(text.begin(), text.end() - 1, nullptr, false);
  if (a.is_discarded() || !a.is_object()) __builtin_trap();
  auto ok = a.find("ok");
  if (ok == a.end() || !ok->is_boolean()) __builtin_trap();
  if (!ok->get<bool>()) {
    auto e = a.find("error");
    if (e == a.end() || !e->is_object() || !e->contains("code") || !(*e)["code"].is_string() ||
        !e->contains("message") || !(*e)["message"].is_string())
      __builtin_trap();
    Status s = answer_status(a);
    if (s.is_ok()) __builtin_trap();
  }
}

}  // namespace
}  // namespace multisnap::control

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace multisnap::control;
  static bool quiet = [] {
    multisnap::set_log_level(multisnap::LogLevel::kOff);
    return true;
  }();
  (void)quiet;
  std::string_view input(reinterpret_cast<const char*>(data), size);
  const Handler handler = handle;
  for (int lines = 0; lines < 64; ++lines) {
    size_t nl = input.find('\n');
    std::string_view line = input.substr(0, nl);
    StringWriter out;
    if (!serve_line(line, handler, out)) __builtin_trap();  // this handler never fails mid-stream
    check_answer(out.text);
    auto list = parse_snapshot_list(line, [](const SnapshotRow& row) {
      std::string printed;
      append_list_element(printed, row);
    });
    if (list.is_ok() && !answer_status(*list).is_ok()) __builtin_trap();
    if (nl == std::string_view::npos) break;
    input.remove_prefix(nl + 1);
  }
  return 0;
}
