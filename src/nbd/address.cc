#include "nbd/address.h"

#include <charconv>

namespace multisnap::nbd {

Result<ListenAddress> parse_listen_address(std::string_view spec) {
  ListenAddress a;
  if (spec.starts_with("unix:")) {
    a.kind = ListenAddress::Kind::kUnix;
    a.path = std::string(spec.substr(5));
    if (a.path.empty()) return make_error(Code::kInvalidArgument, "'{}': no socket path", spec);
    return a;
  }
  if (!spec.starts_with("tcp:")) {
    return make_error(Code::kInvalidArgument, "'{}': expected unix:PATH or tcp:HOST:PORT", spec);
  }
  std::string_view rest = spec.substr(4);
  size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) {
    return make_error(Code::kInvalidArgument, "'{}': expected tcp:HOST:PORT", spec);
  }
  std::string_view host = rest.substr(0, colon);
  std::string_view port = rest.substr(colon + 1);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return make_error(Code::kInvalidArgument, "'{}': bad port '{}'", spec, port);
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  a.kind = ListenAddress::Kind::kTcp;
  a.host = host.empty() ? "127.0.0.1" : std::string(host);
  a.port = static_cast<uint16_t>(value);
  return a;
}

std::string ListenAddress::to_string() const {
  if (kind == Kind::kUnix) return "unix:" + path;
  if (host.find(':') != std::string::npos) return fmt::format("tcp:[{}]:{}", host, port);
  return fmt::format("tcp:{}:{}", host, port);
}

}  // namespace multisnap::nbd
