// EngineBackend, the NBD server's view of the engine.
#include "daemon/engine_backend.h"

#include <gtest/gtest.h>

#include "engine/engine_fixture.h"

namespace multisnap {
namespace {

using testing::EngineHarness;
using testing::EngineParams;

// NBD_OPT_LIST is answered from memory for any client: it names the origin
// and at most a bounded number of snapshots (property 4, memory bounded by
// configuration), and says so; every snapshot still opens by name.
TEST(EngineBackendList, ListsAtMostTheLimitAndSaysSo) {
  EngineHarness h(EngineParams{});
  h.open();
  for (int i = 0; i < 5; ++i) h.snapshot();
  EngineBackend backend(h.engine(), true);
  auto all = backend.list_exports();
  ASSERT_TRUE(all.is_ok()) << all.status().to_string();
  ASSERT_EQ(all->size(), 6u);
  EXPECT_EQ(all->front().name, "origin");
  EXPECT_EQ(all->front().description.find("listed"), std::string::npos);
  EXPECT_EQ(all->back().name, "snapshot/5");

  backend.set_list_limit(3);
  auto some = backend.list_exports();
  ASSERT_TRUE(some.is_ok());
  ASSERT_EQ(some->size(), 4u);
  EXPECT_EQ((*some)[3].name, "snapshot/3");
  EXPECT_NE(some->front().description.find("the first 3 snapshots are listed"), std::string::npos)
      << some->front().description;
  auto unlisted = backend.export_info("snapshot/5");
  ASSERT_TRUE(unlisted.is_ok()) << unlisted.status().to_string();
  EXPECT_EQ(unlisted->name, "snapshot/5");

  backend.set_list_limit(5);  // exactly as many as there are: nothing to say
  auto exact = backend.list_exports();
  ASSERT_TRUE(exact.is_ok());
  EXPECT_EQ(exact->size(), 6u);
  EXPECT_EQ(exact->front().description.find("listed"), std::string::npos);
}

}  // namespace
}  // namespace multisnap
