// The contract between ensembled and ensemble-worker: one definition of each fact.
#include "protocol/worker_contract.h"

#include <gtest/gtest.h>

using namespace ensemble::protocol;

namespace {

TEST(WorkerContract, APortsFilesAreNamedByItsNumberAndTheRecordSitsBesideTheLog) {
    const auto files = port_files(log_folder("/var/lib/ensemble"), 8100);
    EXPECT_EQ(files.worker_log, "/var/lib/ensemble/logs/worker-8100.log");
    EXPECT_EQ(files.engine_log, "/var/lib/ensemble/logs/engine-8100.log");
    EXPECT_EQ(files.engine_record, "/var/lib/ensemble/logs/engine-8100.pid");
    EXPECT_EQ(engine_record_for("/tmp/custom.log"), "/tmp/custom.pid");
    EXPECT_EQ(engine_record_for("/tmp/odd.pid"), "/tmp/odd.pid.record") << "never the log itself";
    EXPECT_EQ(engine_socket("/run/ensemble", 8100), "/run/ensemble/engine-8100.sock");
}

TEST(WorkerContract, ASwapsIncomingWorkerHasFilesOfItsOwn) {
    const auto serving = port_files("/var/lib/ensemble/logs", 8100, 0);
    const auto incoming = port_files("/var/lib/ensemble/logs", 8100, 1);
    EXPECT_EQ(incoming.worker_log, "/var/lib/ensemble/logs/worker-8100.b.log");
    EXPECT_EQ(incoming.engine_log, "/var/lib/ensemble/logs/engine-8100.b.log");
    EXPECT_EQ(incoming.engine_record, "/var/lib/ensemble/logs/engine-8100.b.pid");
    EXPECT_NE(incoming.engine_record, serving.engine_record);
    EXPECT_EQ(engine_socket("/run/ensemble", 8100, 1), "/run/ensemble/engine-8100.b.sock");
}

TEST(WorkerContract, HandlesAreKebabCaseUpTo64Characters) {
    for (const auto* good : {"qwen3-8b", "llama-3.1-8b", "a"})
        EXPECT_TRUE(is_valid_handle(good)) << good;
    EXPECT_TRUE(is_valid_handle(std::string(64, 'a')));
    for (const auto* bad : {"", "Qwen", "a_b", "-a", "a-", "a..b", "a b", "a/b"})
        EXPECT_FALSE(is_valid_handle(bad)) << bad;
    EXPECT_FALSE(is_valid_handle(std::string(65, 'a')));
}

TEST(WorkerContract, ExitCodesAreTheDocumentedNumbers) {
    EXPECT_EQ(exit_code(WorkerExit::ok), 0);
    EXPECT_EQ(exit_code(WorkerExit::bad_configuration), 2);
    EXPECT_EQ(exit_code(WorkerExit::port_in_use), 3);
    EXPECT_EQ(exit_code(WorkerExit::engine_not_started), 4);
    EXPECT_EQ(exit_code(WorkerExit::model_not_loadable), 5);
}

}  // namespace
