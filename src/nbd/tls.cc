#include "nbd/tls.h"

#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "util/log.h"

namespace multisnap::nbd {
namespace {

// GnuTLS's default record size; larger sends are cut into records anyway.
constexpr size_t kRecordSize = 16384;
// At most this much is encrypted per send() call (the caller calls again
// while it has output and the socket takes it).
constexpr size_t kMaxSendPerCall = 1u << 20;

// The server picks the cipher: its CPU encrypts every reply.
constexpr const char* kCertPriority = "NORMAL:%SERVER_PRECEDENCE";
// A TLS 1.3 external PSK comes with SHA-256, which rules out AES-256-GCM
// (SHA-384), and NORMAL lists ChaCha20 before AES-128-GCM: on a CPU with
// AES instructions that made bulk reads 4 to 7 times slower than with
// certificates. There, AES-128-GCM goes first.
constexpr const char* kPskPriority = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK:%SERVER_PRECEDENCE";
constexpr const char* kPskPriorityAes =
    "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK:-CHACHA20-POLY1305:+CHACHA20-POLY1305:%SERVER_PRECEDENCE";

bool cpu_has_aes() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("aes");
#else
  return false;
#endif
}

// The file can be opened for reading; otherwise an error naming it.
Status check_readable(const std::string& path, const std::string& what) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    Code code = errno == ENOENT ? Code::kNotFound : Code::kIoError;
    return make_error(code, "{} {}: {}", what, path, std::strerror(errno));
  }
  ::close(fd);
  return Status::ok();
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// psktool's format: `username:hexkey`, one per line. Checked here so that a
// broken file is an error at start; GnuTLS reads the file itself per handshake.
Status check_psk_file(const std::string& path) {
  MS_TRY(check_readable(path, "--tls-psk: cannot read"));
  std::ifstream in(path);
  std::string line;
  int number = 0, keys = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    size_t colon = line.find(':');
    std::string_view key = colon == std::string::npos ? "" : std::string_view(line).substr(colon + 1);
    bool hex = !key.empty() && key.size() % 2 == 0 &&
               std::all_of(key.begin(), key.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
    if (colon == 0 || !hex) {
      return make_error(Code::kInvalidArgument,
                        "--tls-psk: {} line {} is not `username:hexkey` (as psktool writes it)", path, number);
    }
    ++keys;
  }
  if (keys == 0) return make_error(Code::kInvalidArgument, "--tls-psk: {} holds no key", path);
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    MS_LOG_WARN("TLS: the PSK file {} can be read by other users (mode {:o}); chmod 600 it", path,
                st.st_mode & 0777);
  }
  return Status::ok();
}

std::string gnutls_message(int rc) {
  return gnutls_strerror(rc);
}

}  // namespace

// ---- TlsCredentials

struct TlsCredentials::Impl {
  TlsOptions options;
  gnutls_certificate_credentials_t cert = nullptr;
  gnutls_psk_server_credentials_t psk = nullptr;
  gnutls_priority_t priority = nullptr;

  ~Impl() {
    if (priority) gnutls_priority_deinit(priority);
    if (cert) gnutls_certificate_free_credentials(cert);
    if (psk) gnutls_psk_free_server_credentials(psk);
  }

  Status load_certificates() {
    const std::string& dir = options.certificates_dir;
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return make_error(Code::kNotFound, "--tls-certificates: {} is not a directory", dir);
    }
    std::string ca = dir + "/ca-cert.pem", crt = dir + "/server-cert.pem", key = dir + "/server-key.pem",
                crl = dir + "/ca-crl.pem";
    MS_TRY(check_readable(crt, "--tls-certificates: cannot read"));
    MS_TRY(check_readable(key, "--tls-certificates: cannot read"));
    if (options.verify_peer) MS_TRY(check_readable(ca, "--tls-verify-peer needs the CA certificate; cannot read"));
    if (int rc = gnutls_certificate_allocate_credentials(&cert); rc < 0) {
      return make_error(Code::kIoError, "TLS: {}", gnutls_message(rc));
    }
    if (exists(ca)) {
      MS_TRY(check_readable(ca, "--tls-certificates: cannot read"));
      int n = gnutls_certificate_set_x509_trust_file(cert, ca.c_str(), GNUTLS_X509_FMT_PEM);
      if (n < 0) return make_error(Code::kInvalidArgument, "--tls-certificates: {}: {}", ca, gnutls_message(n));
      if (n == 0 && options.verify_peer) {
        return make_error(Code::kInvalidArgument, "--tls-certificates: {} holds no certificate", ca);
      }
    }
    if (exists(crl)) {
      int n = gnutls_certificate_set_x509_crl_file(cert, crl.c_str(), GNUTLS_X509_FMT_PEM);
      if (n < 0) return make_error(Code::kInvalidArgument, "--tls-certificates: {}: {}", crl, gnutls_message(n));
    }
    int rc = gnutls_certificate_set_x509_key_file(cert, crt.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
      return make_error(Code::kInvalidArgument, "--tls-certificates: {} with {}: {}", crt, key, gnutls_message(rc));
    }
    gnutls_certificate_set_known_dh_params(cert, GNUTLS_SEC_PARAM_MEDIUM);
    return Status::ok();
  }

  Status load_psk() {
    MS_TRY(check_psk_file(options.psk_file));
    if (int rc = gnutls_psk_allocate_server_credentials(&psk); rc < 0) {
      return make_error(Code::kIoError, "TLS: {}", gnutls_message(rc));
    }
    int rc = gnutls_psk_set_server_credentials_file(psk, options.psk_file.c_str());
    if (rc < 0) return make_error(Code::kInvalidArgument, "--tls-psk: {}: {}", options.psk_file, gnutls_message(rc));
    gnutls_psk_set_server_known_dh_params(psk, GNUTLS_SEC_PARAM_MEDIUM);
    return Status::ok();
  }
};

Result<std::shared_ptr<const TlsCredentials>> TlsCredentials::load(const TlsOptions& options) {
  bool certs = !options.certificates_dir.empty(), psk = !options.psk_file.empty();
  if (certs == psk) {
    return make_error(Code::kInvalidArgument, "TLS needs either --tls-certificates DIR or --tls-psk FILE{}",
                      certs ? ", not both" : "");
  }
  if (psk && options.verify_peer) {
    return make_error(Code::kInvalidArgument, "--tls-verify-peer goes with --tls-certificates (a PSK is its own proof)");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  MS_TRY(certs ? impl->load_certificates() : impl->load_psk());
  const char* where = nullptr;
  const char* priority = certs ? kCertPriority : cpu_has_aes() ? kPskPriorityAes : kPskPriority;
  int rc = gnutls_priority_init(&impl->priority, priority, &where);
  if (rc < 0) return make_error(Code::kIoError, "TLS priorities: {}", gnutls_message(rc));
  return std::shared_ptr<const TlsCredentials>(new TlsCredentials(std::move(impl)));
}

TlsCredentials::TlsCredentials(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TlsCredentials::~TlsCredentials() = default;

std::string TlsCredentials::describe() const {
  if (impl_->psk) return "PSK from " + impl_->options.psk_file;
  return fmt::format("X.509 certificates from {}{}", impl_->options.certificates_dir,
                     impl_->options.verify_peer ? ", client certificates verified" : "");
}

// ---- TlsTransport

struct TlsTransport::Session {
  gnutls_session_t s = nullptr;
  ~Session() {
    if (s) gnutls_deinit(s);
  }
};

namespace {

ssize_t pull(gnutls_transport_ptr_t ptr, void* buf, size_t size) {
  auto* lower = static_cast<Transport*>(ptr);
  return lower->receive(buf, size);  // errno as GnuTLS expects it
}

ssize_t vec_push(gnutls_transport_ptr_t ptr, const giovec_t* iov, int count) {
  auto* lower = static_cast<Transport*>(ptr);
  return lower->send(reinterpret_cast<const iovec*>(iov), count);
}

int pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms) {
  auto* lower = static_cast<Transport*>(ptr);
  pollfd p{lower->in_fd(), POLLIN, 0};
  int rc = ::poll(&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : static_cast<int>(ms));
  return rc;
}

// Copies up to `max` bytes of iov[] starting `skip` bytes in into `dest`.
size_t gather(const iovec* iov, int count, size_t skip, uint8_t* dest, size_t max) {
  size_t n = 0;
  for (int i = 0; i < count && n < max; ++i) {
    size_t len = iov[i].iov_len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    size_t take = std::min(len - skip, max - n);
    std::memcpy(dest + n, static_cast<const uint8_t*>(iov[i].iov_base) + skip, take);
    n += take;
    skip = 0;
  }
  return n;
}

// The contiguous bytes at `skip` if at least `want` of them are in one iovec.
const uint8_t* contiguous(const iovec* iov, int count, size_t skip, size_t want) {
  for (int i = 0; i < count; ++i) {
    size_t len = iov[i].iov_len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    return len - skip >= want ? static_cast<const uint8_t*>(iov[i].iov_base) + skip : nullptr;
  }
  return nullptr;
}

bool retry(int rc) {
  return rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED;
}

}  // namespace

TlsTransport::TlsTransport(std::shared_ptr<const TlsCredentials> credentials, std::unique_ptr<Transport> lower)
    : credentials_(std::move(credentials)),
      lower_(std::move(lower)),
      session_(std::make_unique<Session>()),
      staging_(new uint8_t[kRecordSize]) {}

TlsTransport::~TlsTransport() = default;

Result<std::unique_ptr<TlsTransport>> TlsTransport::create(std::shared_ptr<const TlsCredentials> credentials,
                                                           std::unique_ptr<Transport> lower) {
  std::unique_ptr<TlsTransport> t(new TlsTransport(std::move(credentials), std::move(lower)));
  const TlsCredentials::Impl& c = *t->credentials_->impl_;
  gnutls_session_t& s = t->session_->s;
  if (int rc = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NONBLOCK); rc < 0) {
    return make_error(Code::kIoError, "TLS session: {}", gnutls_message(rc));
  }
  int rc = gnutls_priority_set(s, c.priority);
  if (rc >= 0 && c.cert) rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, c.cert);
  if (rc >= 0 && c.psk) rc = gnutls_credentials_set(s, GNUTLS_CRD_PSK, c.psk);
  if (rc < 0) return make_error(Code::kIoError, "TLS session: {}", gnutls_message(rc));
  if (c.cert && c.options.verify_peer) {
    gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
    gnutls_session_set_verify_cert(s, nullptr, 0);  // the CA's signature; no host name for clients
  } else if (c.cert) {
    gnutls_certificate_server_set_request(s, GNUTLS_CERT_IGNORE);
  }
  gnutls_handshake_set_timeout(s, 0);  // the connection's handshake deadline covers it
  gnutls_transport_set_ptr(s, t->lower_.get());
  gnutls_transport_set_pull_function(s, pull);
  gnutls_transport_set_pull_timeout_function(s, pull_timeout);
  gnutls_transport_set_vec_push_function(s, vec_push);
  return t;
}

TlsTransport::Step TlsTransport::handshake() {
  gnutls_session_t s = session_->s;
  for (int warnings = 0;;) {
    int rc = gnutls_handshake(s);
    if (rc == GNUTLS_E_SUCCESS) {
      established_ = true;
      return Step::kDone;
    }
    if (retry(rc)) return gnutls_record_get_direction(s) ? Step::kWantWrite : Step::kWantRead;
    // A warning alert: go on, but hand back to the caller now and then so
    // that its handshake deadline holds against a stream of them.
    if (!gnutls_error_is_fatal(rc)) {
      if (++warnings < 16) continue;
      return Step::kWantRead;
    }
    error_ = gnutls_message(rc);
    if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED) {
      error_ += fmt::format(" ({})", gnutls_alert_get_name(gnutls_alert_get(s)));
    } else if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
      gnutls_datum_t text{};
      if (gnutls_certificate_verification_status_print(gnutls_session_get_verify_cert_status(s),
                                                       gnutls_certificate_type_get(s), &text, 0) == 0) {
        error_ += fmt::format(": {}", reinterpret_cast<const char*>(text.data));
        gnutls_free(text.data);
      }
    }
    return Step::kFailed;
  }
}

ssize_t TlsTransport::receive(void* buf, size_t size) {
  gnutls_session_t s = session_->s;
  auto* out = static_cast<uint8_t*>(buf);
  size_t got = 0;
  int soft_errors = 0;
  // Until GnuTLS needs the socket: a record it has already read and
  // decrypted would otherwise wait for a poll() that never fires.
  while (got < size && !eof_) {
    ssize_t rc = gnutls_record_recv(s, out + got, size - got);
    if (rc > 0) {
      got += static_cast<size_t>(rc);
      continue;
    }
    if (rc == 0 || rc == GNUTLS_E_PREMATURE_TERMINATION) {
      eof_ = true;  // a client that closes without close_notify ends as cleanly
      break;
    }
    if (rc == GNUTLS_E_INTERRUPTED) continue;
    if (rc == GNUTLS_E_AGAIN) {
      if (got > 0) break;
      errno = EAGAIN;
      return -1;
    }
    if (!gnutls_error_is_fatal(static_cast<int>(rc)) && ++soft_errors < 16) continue;
    error_ = fmt::format("TLS: {}", gnutls_message(static_cast<int>(rc)));
    if (got > 0) break;  // the error comes back on the next call
    errno = EPROTO;
    return -1;
  }
  return static_cast<ssize_t>(got);
}

ssize_t TlsTransport::send(const iovec* iov, int count) {
  gnutls_session_t s = session_->s;
  size_t total = 0;
  if (staged_ > 0) {
    // GnuTLS holds a record it could not write; the caller offers the same
    // bytes again, and they count once it has gone.
    ssize_t rc = gnutls_record_send(s, nullptr, 0);
    if (retry(static_cast<int>(rc))) {
      errno = EAGAIN;
      return -1;
    }
    if (rc < 0) {
      error_ = fmt::format("TLS: {}", gnutls_message(static_cast<int>(rc)));
      errno = EPIPE;
      return -1;
    }
    // What the held record carried: with a smaller record size negotiated
    // by the client that may be less than was offered.
    total = rc > 0 ? std::min(static_cast<size_t>(rc), staged_) : staged_;
    staged_ = 0;
  }
  // One record at a time, never larger than the session allows, so that a
  // record held on EAGAIN carries exactly the bytes offered for it.
  const size_t record = std::min<size_t>(kRecordSize, std::max<size_t>(1, gnutls_record_get_max_size(s)));
  while (total < kMaxSendPerCall) {
    // A whole record straight from the caller's buffer when it is there,
    // else small pieces (headers, short payloads) gathered into one.
    const uint8_t* data = contiguous(iov, count, total, record);
    size_t n = record;
    if (data == nullptr) {
      n = gather(iov, count, total, staging_.get(), record);
      data = staging_.get();
    }
    if (n == 0) break;
    ssize_t rc = gnutls_record_send(s, data, n);
    if (retry(static_cast<int>(rc))) {
      staged_ = n;
      if (total > 0) break;
      errno = EAGAIN;
      return -1;
    }
    if (rc < 0) {
      error_ = fmt::format("TLS: {}", gnutls_message(static_cast<int>(rc)));
      if (total > 0) break;
      errno = EPIPE;
      return -1;
    }
    total += static_cast<size_t>(rc);
  }
  return static_cast<ssize_t>(total);
}

int TlsTransport::in_fd() const {
  return lower_->in_fd();
}
int TlsTransport::out_fd() const {
  return lower_->out_fd();
}

void TlsTransport::shutdown() {
  lower_->shutdown();
}

void TlsTransport::close_gracefully() {
  // Only a session that is up has a goodbye; a client dropped halfway
  // through its handshake just sees the connection close.
  if (established_) (void)gnutls_bye(session_->s, GNUTLS_SHUT_WR);  // one try: never blocks
}

std::string TlsTransport::describe_security() const {
  gnutls_session_t s = session_->s;
  // "(TLS1.3-PSK)-(ECDHE-SECP256R1)-(AES-256-GCM)": version, key exchange, cipher.
  char* desc = gnutls_session_get_desc(s);
  std::string out = desc != nullptr ? desc : gnutls_protocol_get_name(gnutls_protocol_get_version(s));
  gnutls_free(desc);
  if (credentials_->impl_->psk) {
    const char* user = gnutls_psk_server_get_username(s);
    if (user != nullptr) out += fmt::format(", PSK user '{}'", user);
    return out;
  }
  unsigned int n = 0;
  const gnutls_datum_t* certs = gnutls_certificate_get_peers(s, &n);
  gnutls_x509_crt_t crt;
  if (certs != nullptr && n > 0 && gnutls_x509_crt_init(&crt) == 0) {
    gnutls_datum_t dn{};
    if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0 && gnutls_x509_crt_get_dn3(crt, &dn, 0) == 0) {
      out += fmt::format(", client '{}'", reinterpret_cast<const char*>(dn.data));
      gnutls_free(dn.data);
    }
    gnutls_x509_crt_deinit(crt);
  }
  return out;
}

}  // namespace multisnap::nbd
