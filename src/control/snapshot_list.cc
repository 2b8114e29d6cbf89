#include "control/snapshot_list.h"

#include <vector>

namespace multisnap::control {

namespace {

// Builds Json values from SAX events: the answer outside the snapshot
// objects (ok, error, space), and the values of unknown snapshot fields.
class JsonBuilder {
 public:
  void value(Json v) { place(std::move(v)); }
  void start(Json container) { stack_.push_back(place(std::move(container))); }
  void end() { stack_.pop_back(); }
  void key(const std::string& k) { key_ = k; }
  size_t depth() const { return stack_.size(); }
  Json& root() { return root_; }

 private:
  // Pointers to open containers stay valid: only the innermost one grows.
  Json* place(Json v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Json& top = *stack_.back();
    if (top.is_array()) {
      top.push_back(std::move(v));
      return &top.back();
    }
    Json& slot = top[key_];  // a repeated key: the last value, as Json::parse
    slot = std::move(v);
    return &slot;
  }

  Json root_;
  std::vector<Json*> stack_;
  std::string key_;
};

// One SAX event's scalar value.
struct Scalar {
  enum class Type { kNull, kBool, kUnsigned, kInteger, kFloat, kString } type;
  bool b = false;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string* s = nullptr;

  Json to_json() const {
    switch (type) {
      case Type::kNull: return Json(nullptr);
      case Type::kBool: return Json(b);
      case Type::kUnsigned: return Json(u);
      case Type::kInteger: return Json(i);
      case Type::kFloat: return Json(f);
      case Type::kString: return Json(*s);
    }
    return Json();
  }
};

enum class Field { kId, kName, kOf, kCreated, kExport, kUuid, kWritten, kExclusive, kShared, kOther };
enum class OfField { kId, kName, kOther };  // kOther: a newer server's field, ignored

constexpr unsigned bit(Field f) { return 1u << static_cast<unsigned>(f); }
constexpr unsigned kRequired = bit(Field::kId) | bit(Field::kName) | bit(Field::kOf) | bit(Field::kCreated) |
                               bit(Field::kExport);

Field field_of(std::string_view k) {
  if (k == "id") return Field::kId;
  if (k == "name") return Field::kName;
  if (k == "of") return Field::kOf;
  if (k == "created") return Field::kCreated;
  if (k == "export") return Field::kExport;
  if (k == "uuid") return Field::kUuid;
  if (k == "written") return Field::kWritten;
  if (k == "exclusive_bytes") return Field::kExclusive;
  if (k == "shared_bytes") return Field::kShared;
  return Field::kOther;
}

// The answer's snapshot objects (the elements of the top-level
// "snapshots" array) fill `row_`, which goes to `each_` at the object's
// end; everything else goes to `rest_`.
class ListHandler final : public nlohmann::json_sax<Json> {
 public:
  explicit ListHandler(const SnapshotRowFn& each) : each_(each) {}

  // The error that stopped the parse, if the handler stopped it.
  const std::optional<Status>& error() const { return error_; }
  Json& rest() { return rest_.root(); }

  bool null() override { return scalar({Scalar::Type::kNull}); }
  bool boolean(bool v) override {
    Scalar s{Scalar::Type::kBool};
    s.b = v;
    return scalar(s);
  }
  bool number_integer(number_integer_t v) override {
    Scalar s{Scalar::Type::kInteger};
    s.i = v;
    return scalar(s);
  }
  bool number_unsigned(number_unsigned_t v) override {
    Scalar s{Scalar::Type::kUnsigned};
    s.u = v;
    return scalar(s);
  }
  bool number_float(number_float_t v, const string_t&) override {
    Scalar s{Scalar::Type::kFloat};
    s.f = v;
    return scalar(s);
  }
  bool string(string_t& v) override {
    Scalar s{Scalar::Type::kString};
    s.s = &v;
    return scalar(s);
  }
  bool binary(binary_t&) override { return malformed("binary value"); }  // not in JSON text

  bool start_object(std::size_t) override { return start(Json::object()); }
  bool start_array(std::size_t) override { return start(Json::array()); }

  bool key(string_t& k) override {
    if (capture_) {
      capture_->key(k);
    } else if (level_ == 1) {
      field_ = field_of(k);
      if (field_ == Field::kOther) other_key_ = k;
    } else if (level_ == 2) {
      if (k == "id") of_field_ = OfField::kId;
      else if (k == "name") of_field_ = OfField::kName;
      else of_field_ = OfField::kOther;  // a scalar is ignored; an object or array is refused below
    } else {
      if (rest_.depth() == 1) top_key_ = k;
      rest_.key(k);
    }
    return true;
  }

  bool end_object() override { return end(); }
  bool end_array() override { return end(); }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;  // read_answer reports it (or that the connection ended)
  }

 private:
  // The list is open and its next element would go at this point.
  bool at_element() const { return in_list_ && level_ == 0 && rest_.depth() == 2; }

  bool malformed(const std::string& why) {
    error_ = make_error(Code::kIoError, "malformed snapshot-list answer from the control socket: {}", why);
    return false;
  }
  bool wrong_type(const char* field, const char* wanted) {
    return malformed(fmt::format("snapshot field '{}' is not {}", field, wanted));
  }

  bool scalar(const Scalar& v) {
    if (capture_) {
      capture_->value(v.to_json());
      return true;
    }
    using T = Scalar::Type;
    if (level_ == 1) {
      seen_ |= bit(field_);
      switch (field_) {
        case Field::kId:
          if (v.type != T::kUnsigned) return wrong_type("id", "a whole number");
          row_.id = v.u;
          return true;
        case Field::kName:
          if (v.type != T::kNull && v.type != T::kString) return wrong_type("name", "a string or null");
          row_.has_name = v.type == T::kString;
          if (row_.has_name) row_.name.assign(*v.s);
          return true;
        case Field::kOf:
          if (v.type != T::kNull) return wrong_type("of", "an object or null");
          row_.of_origin = true;
          return true;
        case Field::kCreated:
          if (v.type != T::kString) return wrong_type("created", "a string");
          row_.created.assign(*v.s);
          return true;
        case Field::kExport:
          if (v.type != T::kString) return wrong_type("export", "a string");
          row_.export_name.assign(*v.s);
          return true;
        case Field::kUuid:
          if (v.type != T::kString) return wrong_type("uuid", "a string");
          row_.has_uuid = true;
          row_.uuid.assign(*v.s);
          return true;
        case Field::kWritten:
          if (v.type != T::kBool) return wrong_type("written", "true or false");
          row_.written = v.b;
          return true;
        case Field::kExclusive:
        case Field::kShared:
          if (v.type != T::kUnsigned)
            return wrong_type(field_ == Field::kShared ? "shared_bytes" : "exclusive_bytes", "a whole number");
          (field_ == Field::kShared ? row_.shared_bytes : row_.exclusive_bytes) = v.u;
          return true;
        case Field::kOther:
          if (!row_.extra.is_object()) row_.extra = Json::object();
          row_.extra[other_key_] = v.to_json();
          return true;
      }
    }
    if (level_ == 2) {
      if (of_field_ == OfField::kOther) return true;
      if (of_field_ == OfField::kId) {
        if (v.type != T::kUnsigned) return wrong_type("of.id", "a whole number");
        of_seen_ |= 1;
        row_.of_id = v.u;
      } else {
        if (v.type != T::kNull && v.type != T::kString) return wrong_type("of.name", "a string or null");
        of_seen_ |= 2;
        row_.of_has_name = v.type == T::kString;
        if (row_.of_has_name) row_.of_name.assign(*v.s);
      }
      return true;
    }
    if (at_element()) return malformed("an element of \"snapshots\" is not an object");
    rest_.value(v.to_json());
    return true;
  }

  bool start(Json container) {
    const bool object = container.is_object();
    if (capture_) {
      capture_->start(std::move(container));
      return true;
    }
    if (level_ == 1) {
      seen_ |= bit(field_);
      if (field_ == Field::kOf && object) {
        level_ = 2;
        of_seen_ = 0;
        row_.of_origin = false;
        return true;
      }
      if (field_ != Field::kOther) return malformed("snapshot field of the wrong type");
      capture_.emplace();
      capture_->start(std::move(container));
      return true;
    }
    if (level_ == 2) return malformed("snapshot field 'of' holds an object or array");
    if (at_element()) {
      if (!object) return malformed("an element of \"snapshots\" is not an object");
      level_ = 1;
      seen_ = 0;
      row_.has_name = row_.has_uuid = false;
      row_.of_origin = true;
      row_.of_has_name = false;
      row_.written.reset();
      row_.exclusive_bytes.reset();
      row_.shared_bytes.reset();
      row_.extra = nullptr;
      return true;
    }
    if (!object && rest_.depth() == 1 && top_key_ == "snapshots") in_list_ = true;
    rest_.start(std::move(container));
    return true;
  }

  bool end() {
    if (capture_) {
      capture_->end();
      if (capture_->depth() == 0) {
        if (!row_.extra.is_object()) row_.extra = Json::object();
        row_.extra[other_key_] = std::move(capture_->root());
        capture_.reset();
      }
      return true;
    }
    if (level_ == 2) {
      if (of_seen_ != 3) return malformed("snapshot field 'of' lacks its id or name");
      level_ = 1;
      return true;
    }
    if (level_ == 1) {
      if ((seen_ & kRequired) != kRequired)
        return malformed("a snapshot lacks one of id, name, of, created and export");
      level_ = 0;
      each_(row_);
      return true;
    }
    if (in_list_ && rest_.depth() == 2) in_list_ = false;
    rest_.end();
    return true;
  }

  const SnapshotRowFn& each_;
  JsonBuilder rest_;
  std::string top_key_;  // the last key of the answer object
  bool in_list_ = false;   // inside the answer's "snapshots" array
  int level_ = 0;          // 1 in a snapshot object, 2 in its "of"
  Field field_ = Field::kOther;
  OfField of_field_ = OfField::kId;
  std::string other_key_;  // field_ kOther: its name
  unsigned seen_ = 0;      // bit(Field) of the fields seen in the row
  unsigned of_seen_ = 0;   // 1 id, 2 name
  std::optional<JsonBuilder> capture_;  // the value of an unknown field, being built
  SnapshotRow row_;
  std::optional<Status> error_;
};

// The answer once parsed: ok, and "snapshots" an array.
Result<Json> finish(ListHandler& handler, const Status& parsed) {
  if (handler.error()) return *handler.error();
  MS_TRY(parsed);
  Json& rest = handler.rest();
  MS_TRY(answer_status(rest));  // "ok": false after a part of the list
  if (!rest.contains("snapshots") || !rest["snapshots"].is_array())
    return make_error(Code::kIoError, "malformed snapshot-list answer from the control socket: no \"snapshots\"");
  return std::move(rest);
}

}  // namespace

Json to_json(const SnapshotRow& row) {
  Json j = row.extra.is_object() ? row.extra : Json::object();
  j["id"] = row.id;
  j["name"] = row.has_name ? Json(row.name) : Json(nullptr);
  j["of"] = row.of_origin ? Json(nullptr)
                          : Json{{"id", row.of_id}, {"name", row.of_has_name ? Json(row.of_name) : Json(nullptr)}};
  j["created"] = row.created;
  j["export"] = row.export_name;
  if (row.has_uuid) j["uuid"] = row.uuid;
  if (row.written) j["written"] = *row.written;
  if (row.exclusive_bytes) j["exclusive_bytes"] = *row.exclusive_bytes;
  if (row.shared_bytes) j["shared_bytes"] = *row.shared_bytes;
  return j;
}

void append_list_element(std::string& out, const SnapshotRow& row) {
  if (row.extra.is_object() && !row.extra.empty()) {  // unknown fields: nlohmann prints it, as before
    std::string text = to_json(row).dump(2);
    for (char c : text) {
      out += c;
      if (c == '\n') out += "  ";
    }
    return;
  }
  // Json::dump(2)'s layout, keys in its (sorted) order, two more spaces
  // of indent; strings from the parser are UTF-8, which dump prints as
  // append_json_string does.
  auto string_or_null = [&out](bool has, const std::string& s) {
    if (has) append_json_string(out, s);
    else out += "null";
  };
  out += "{\n    \"created\": ";
  append_json_string(out, row.created);
  if (row.exclusive_bytes) {
    out += ",\n    \"exclusive_bytes\": ";
    append_json_number(out, *row.exclusive_bytes);
  }
  out += ",\n    \"export\": ";
  append_json_string(out, row.export_name);
  out += ",\n    \"id\": ";
  append_json_number(out, row.id);
  out += ",\n    \"name\": ";
  string_or_null(row.has_name, row.name);
  out += ",\n    \"of\": ";
  if (row.of_origin) {
    out += "null";
  } else {
    out += "{\n      \"id\": ";
    append_json_number(out, row.of_id);
    out += ",\n      \"name\": ";
    string_or_null(row.of_has_name, row.of_name);
    out += "\n    }";
  }
  if (row.shared_bytes) {
    out += ",\n    \"shared_bytes\": ";
    append_json_number(out, *row.shared_bytes);
  }
  if (row.has_uuid) {
    out += ",\n    \"uuid\": ";
    append_json_string(out, row.uuid);
  }
  if (row.written) out += *row.written ? ",\n    \"written\": true" : ",\n    \"written\": false";
  out += "\n  }";
}

Result<Json> read_snapshot_list(ControlClient& client, const SnapshotRowFn& each) {
  ListHandler handler(each);
  Status parsed = client.read_answer(handler);
  return finish(handler, parsed);
}

Result<Json> parse_snapshot_list(std::string_view line, const SnapshotRowFn& each) {
  ListHandler handler(each);
  bool ok = Json::sax_parse(line.begin(), line.end(), &handler);
  return finish(handler, ok ? Status::ok() : make_error(Code::kIoError, "malformed answer from the control socket"));
}

}  // namespace multisnap::control
