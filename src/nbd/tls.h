// TLS for the NBD server (GnuTLS), entered with NBD_OPT_STARTTLS.
//
// TlsCredentials holds what every session of a server shares: X.509
// certificates read from a directory, as nbdkit and qemu-nbd lay them out
// (ca-cert.pem, server-cert.pem, server-key.pem, and ca-crl.pem if present),
// or a PSK file in psktool's format (one `username:hexkey` per line). It is
// made once, at server start, so that a missing or unreadable file is an
// error there and not a failed handshake later; GnuTLS reads the PSK file
// again on each handshake, so keys can be added or revoked without a
// restart. Immutable once made: sessions on any thread use it.
//
// TlsTransport is one server session layered over another Transport (a
// socket or stdio). It is created after the STARTTLS ACK has gone out; the
// connection calls handshake() until it says done, waiting on the lower
// transport's descriptors in between (bounded by the handshake deadline),
// then uses it as any Transport. Received records are decrypted straight
// into the caller's buffer; sends are gathered into record-sized pieces.
#pragma once

#include <memory>
#include <string>

#include "nbd/transport.h"
#include "util/status.h"

namespace multisnap::nbd {

struct TlsOptions {
  std::string certificates_dir;  // X.509: ca-cert.pem, server-cert.pem, server-key.pem
  std::string psk_file;          // PSK: username:hexkey lines (psktool)
  // X.509 only: ask clients for a certificate and refuse those the CA did
  // not sign (or that ca-crl.pem revokes).
  bool verify_peer = false;
};

class TlsCredentials {
 public:
  // kInvalidArgument for a bad combination (neither or both of
  // certificates_dir and psk_file, verify_peer with PSK), kNotFound or
  // kIoError naming the file that is missing or cannot be read or parsed.
  static Result<std::shared_ptr<const TlsCredentials>> load(const TlsOptions& options);
  ~TlsCredentials();
  TlsCredentials(const TlsCredentials&) = delete;
  TlsCredentials& operator=(const TlsCredentials&) = delete;

  std::string describe() const;  // "X.509 certificates from DIR" / "PSK from FILE"

 private:
  friend class TlsTransport;
  struct Impl;
  explicit TlsCredentials(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class TlsTransport final : public Transport {
 public:
  static Result<std::unique_ptr<TlsTransport>> create(std::shared_ptr<const TlsCredentials> credentials,
                                                      std::unique_ptr<Transport> lower);
  ~TlsTransport() override;

  enum class Step { kDone, kWantRead, kWantWrite, kFailed };
  // One step of the handshake; kFailed: last_error() says why.
  Step handshake();

  ssize_t receive(void* buf, size_t size) override;
  ssize_t send(const iovec* iov, int count) override;
  int in_fd() const override;
  int out_fd() const override;
  void shutdown() override;
  void close_gracefully() override;
  std::string last_error() const override { return error_; }
  std::string describe_security() const override;

 private:
  struct Session;
  TlsTransport(std::shared_ptr<const TlsCredentials> credentials, std::unique_ptr<Transport> lower);

  std::shared_ptr<const TlsCredentials> credentials_;
  std::unique_ptr<Transport> lower_;
  std::unique_ptr<Session> session_;
  std::string error_;
  bool eof_ = false;
  bool established_ = false;  // the handshake is done
  // A record gathered from send()'s iovecs and handed to GnuTLS, which
  // returned EAGAIN: the next send() finishes it first.
  std::unique_ptr<uint8_t[]> staging_;
  size_t staged_ = 0;
};

}  // namespace multisnap::nbd
