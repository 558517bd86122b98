// The system layer (os/): what each concept promises, on the OS the tests run on. The macOS
// halves are compiled for macOS by deploy/check-macos; what they share with Linux is here.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "os/child_process.h"
#include "os/descriptor_passing.h"
#include "os/executable_path.h"
#include "os/gpu_wired_limit.h"
#include "os/listening_socket.h"
#include "os/memory_limits.h"
#include "os/memory_pressure.h"
#include "os/peer_credentials.h"
#include "os/port_holder.h"
#include "os/process_identity.h"
#include "os/process_memory.h"
#include "os/recorded_process.h"
#include "os/signal_name.h"
#include "tests/support/files.h"

using namespace ensemble;
using ensemble::testing::read_file;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<ChildProcess> sleeper() {
    SpawnSpec spec;
    spec.argv = {"sleep", "30"};
    auto child = ChildProcess::spawn(spec);
    EXPECT_TRUE(child);
    return child ? std::move(child).value() : nullptr;
}

TEST(SignalName, NamesTheCommonSignalsTheSameOnEveryOs) {
    EXPECT_EQ(signal_name(SIGKILL), "SIGKILL");
    EXPECT_EQ(signal_name(SIGTERM), "SIGTERM");
    EXPECT_EQ(signal_name(SIGSEGV), "SIGSEGV");
    EXPECT_EQ(signal_name(12345), "signal 12345");
    ExitStatus killed{0, SIGKILL, true};
    EXPECT_EQ(killed.describe(), "killed by signal 9 (SIGKILL)");
}

std::filesystem::path scratch_file(const std::string& name) {
    const auto path = std::filesystem::temp_directory_path() /
                      ("ensemble-os-test-" + std::to_string(::getpid()) + "-" + name);
    std::filesystem::remove(path);
    return path;
}

TEST(ChildProcess, IsHeldBeforeExecUntilItIsWrittenDown) {
    const auto marker = scratch_file("ran");
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c", "echo ran > '" + marker.string() + "'"};
    std::optional<RecordedProcess> recorded;
    bool ran_before_recorded = true;
    spec.before_exec = [&](pid_t pid) {
        std::this_thread::sleep_for(200ms);  // the program would have run by now if not held
        ran_before_recorded = std::filesystem::exists(marker);
        recorded = RecordedProcess::of_running(pid);
        return Status(Ok{});
    };
    auto child = ChildProcess::spawn(spec);
    ASSERT_TRUE(child) << child.error().message;
    EXPECT_FALSE(ran_before_recorded);
    ASSERT_TRUE(recorded) << "identified while held";
    EXPECT_EQ(recorded->group, (*child)->pid()) << "in its own group before it runs";
    for (int i = 0; i < 500 && !(*child)->poll_exit(); ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_EQ(read_file(marker), "ran\n");
    std::filesystem::remove(marker);
}

// A record that cannot be written (a full disk): the program never runs, and spawn says why.
TEST(ChildProcess, AChildThatCannotBeWrittenDownNeverRuns) {
    const auto marker = scratch_file("unrecorded-ran");
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c", "echo ran > '" + marker.string() + "'"};
    pid_t held = 0;
    spec.before_exec = [&](pid_t pid) {
        held = pid;
        return Status(Error{"record_unwritable", "the disk is full"});
    };
    auto child = ChildProcess::spawn(spec);
    ASSERT_FALSE(child);
    EXPECT_EQ(child.error().code, "record_unwritable");
    EXPECT_NE(::kill(held, 0), 0) << "given up and reaped";
    std::this_thread::sleep_for(100ms);
    EXPECT_FALSE(std::filesystem::exists(marker)) << "and never ran the program";
}

// The parent dies while it writes the record: the program never runs, so nothing unrecorded
// can be left behind.
TEST(ChildProcess, AChildHeldWhenItsParentDiesNeverRuns) {
    const auto marker = scratch_file("orphan-ran");
    int pid_pipe[2];
    ASSERT_EQ(::pipe(pid_pipe), 0);
    const pid_t parent = ::fork();
    ASSERT_GE(parent, 0);
    if (parent == 0) {
        SpawnSpec spec;
        spec.argv = {"/bin/sh", "-c", "echo ran > '" + marker.string() + "'"};
        spec.die_with_parent = false;  // as on macOS: only the hold stops it
        spec.before_exec = [&](pid_t pid) {
            [[maybe_unused]] auto n = ::write(pid_pipe[1], &pid, sizeof pid);
            ::_exit(0);  // killed mid-record
            return Status(Ok{});
        };
        (void)ChildProcess::spawn(spec);
        ::_exit(1);
    }
    ::close(pid_pipe[1]);
    pid_t held = 0;
    ASSERT_EQ(::read(pid_pipe[0], &held, sizeof held), static_cast<ssize_t>(sizeof held));
    ::close(pid_pipe[0]);
    ::waitpid(parent, nullptr, 0);
    // An exited child that nobody reaps stays a zombie: in a container whose PID 1 is no init
    // (systemd-nspawn or docker running a command), the orphan is never reaped.
    const auto gone = [held] {
        const auto identity = identify_process(held);
        return !identity && identity.error().code == "gone";
    };
    for (int i = 0; i < 500 && !gone(); ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(gone()) << "the held child gave up";
    EXPECT_FALSE(std::filesystem::exists(marker)) << "and never ran the program";
    std::filesystem::remove(marker);
}

TEST(ChildProcess, InheritsNoDescriptorButStdioAndLogsToItsFile) {
    const int leaked = ::open("/dev/null", O_RDONLY);  // no O_CLOEXEC: must still not leak
    ASSERT_GE(leaked, 3);
    const auto log = scratch_file("log");
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c",
                 "test -e /dev/fd/" + std::to_string(leaked) + " && echo leaked || echo closed"};
    spec.log_file = log;
    auto child = ChildProcess::spawn(spec);
    ::close(leaked);
    ASSERT_TRUE(child) << child.error().message;
    for (int i = 0; i < 500 && !(*child)->poll_exit(); ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_EQ(read_file(log), "closed\n");
    struct stat st {};
    ASSERT_EQ(::stat(log.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600) << "logs are this user's alone";
    std::filesystem::remove(log);
}

// The one descriptor a worker is handed (its port's listening socket) arrives as descriptor 3;
// nothing else does.
TEST(ChildProcess, PassesOneDescriptorAsDescriptorThreeAndNothingElse) {
    const int null = ::open("/dev/null", O_RDONLY);
    const int other = ::fcntl(null, F_DUPFD, 10);  // no close-on-exec: must still not leak
    ::close(null);
    auto socket = ListeningSocket::open("127.0.0.1", 0);
    ASSERT_TRUE(socket) << socket.error().message;
    const auto log = scratch_file("passed-log");
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c",
                 "test -e /dev/fd/3 && echo three; test -e /dev/fd/" + std::to_string(other) +
                     " && echo leaked; test -e /dev/fd/" + std::to_string(socket->fd()) +
                     " && echo original"};
    spec.log_file = log;
    spec.passed_fd = socket->fd();
    auto child = ChildProcess::spawn(spec);
    ::close(other);
    ASSERT_TRUE(child) << child.error().message;
    for (int i = 0; i < 500 && !(*child)->poll_exit(); ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_EQ(read_file(log), socket->fd() == 3 ? "three\noriginal\n" : "three\n");
    std::filesystem::remove(log);
}

// How a worker hands its port's socket back to a new ensembled: the same socket arrives, with
// its bytes, close-on-exec, and is taken only for the port it listens on.
TEST(DescriptorPassing, AListeningSocketArrivesWithItsBytes) {
    int pair[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
    auto socket = ListeningSocket::open("127.0.0.1", 0);
    ASSERT_TRUE(socket);
    sockaddr_in address{};
    socklen_t length = sizeof address;
    ::getsockname(socket->fd(), reinterpret_cast<sockaddr*>(&address), &length);
    const int port = ntohs(address.sin_port);
    auto sent = send_with_descriptor(pair[0], "{\"type\":\"register\"}\n", socket->fd());
    ASSERT_TRUE(sent) << sent.error().message;
    std::array<char, 256> buffer{};
    auto got = receive_with_descriptors(pair[1], buffer);
    ASSERT_TRUE(got) << got.error().message;
    EXPECT_EQ(std::string(buffer.data(), got->bytes), "{\"type\":\"register\"}\n");
    ASSERT_EQ(got->descriptors.size(), 1U);
    const int received = got->descriptors[0];
    EXPECT_NE(received, socket->fd()) << "a new descriptor for the same socket";
    EXPECT_EQ(::fcntl(received, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    EXPECT_EQ(ListeningSocket::take(::dup(received), port + 1).error().code, "no_listening_socket");
    auto taken = ListeningSocket::take(received, port);
    ASSERT_TRUE(taken) << taken.error().message;
    socket->close();  // the original gone, the port is still held through the copy
    EXPECT_EQ(ListeningSocket::open("127.0.0.1", port).error().code, "port_busy");
    // Bytes alone: no descriptor; nothing waiting: would_block on a non-blocking socket.
    ASSERT_EQ(::write(pair[0], "x", 1), 1);
    got = receive_with_descriptors(pair[1], buffer);
    ASSERT_TRUE(got);
    EXPECT_TRUE(got->descriptors.empty());
    ::fcntl(pair[1], F_SETFL, O_NONBLOCK);
    EXPECT_EQ(receive_with_descriptors(pair[1], buffer).error().code, "would_block");
    ::close(pair[0]);
    got = receive_with_descriptors(pair[1], buffer);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->bytes, 0U) << "closed";
    ::close(pair[1]);
}

int local_port(int fd) {
    sockaddr_in address{};
    socklen_t length = sizeof address;
    EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
    return ntohs(address.sin_port);
}

// A busy port is named with its holder: here, this test program itself.
TEST(PortHolder, NamesTheProcessListeningOnAPort) {
    auto socket = ListeningSocket::open("127.0.0.1", 0);
    ASSERT_TRUE(socket) << socket.error().message;
    const int port = local_port(socket->fd());
    const auto holders = port_holders(port);
    ASSERT_EQ(holders.size(), 1U);
    EXPECT_EQ(holders[0].pid, ::getpid());
    EXPECT_FALSE(holders[0].name.empty());
    EXPECT_EQ(describe_port_holders(port),
              "held by " + holders[0].name + " (pid " + std::to_string(::getpid()) + ")");
    const auto ports = tcp_ports_listened_on_by(::getpid());
    EXPECT_NE(std::find(ports.begin(), ports.end(), port), ports.end());
    const auto busy = ListeningSocket::open("127.0.0.1", port);
    ASSERT_FALSE(busy);
    EXPECT_NE(busy.error().message.find(describe_port_holders(port)), std::string::npos)
        << busy.error().message;
    socket->close();
    EXPECT_TRUE(port_holders(port).empty());
    EXPECT_NE(port_holder_hint(port).find("ss -ltnp sport = :" + std::to_string(port)),
              std::string::npos);
}

TEST(ListeningSocket, IsCheckedBeforeAWorkerAcceptsOnIt) {
    auto socket = ListeningSocket::open("127.0.0.1", 0);
    ASSERT_TRUE(socket) << socket.error().message;
    const int port = local_port(socket->fd());
    EXPECT_TRUE(check_listening_socket(socket->fd(), port));
    const auto wrong_port = check_listening_socket(socket->fd(), port + 1);
    ASSERT_FALSE(wrong_port);
    EXPECT_NE(wrong_port.error().message.find("bound to port " + std::to_string(port)),
              std::string::npos);
    const int file = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(check_listening_socket(file, port).error().code, "no_listening_socket");
    ::close(file);
    const int unbound = ::socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_NE(check_listening_socket(unbound, port).error().message.find("does not listen"),
              std::string::npos);
    ::close(unbound);
    EXPECT_NE(check_listening_socket(1000, port).error().message.find("not open"),
              std::string::npos);
    // Held: a second bind is refused naming the holder (this program; see PortHolder).
    auto again = ListeningSocket::open("127.0.0.1", port);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, "port_busy");
    EXPECT_NE(again.error().message.find("(pid " + std::to_string(::getpid()) + ")"),
              std::string::npos)
        << again.error().message;
    EXPECT_EQ(ListeningSocket::open("localhost", port).error().code, "bad_host");
}

// A spawn that fails for want of our own descriptors must not be blamed on the program (the
// supervisor would count it toward a crash loop of a healthy port).
TEST(ChildProcess, OutOfDescriptorsIsOurOwnShortageNotTheProgramsFault) {
    const auto log = scratch_file("emfile-log");
    const pid_t tester = ::fork();
    ASSERT_GE(tester, 0);
    if (tester == 0) {
        const rlimit low{32, 32};
        ::setrlimit(RLIMIT_NOFILE, &low);
        while (::open("/dev/null", O_RDONLY) >= 0) {
        }
        SpawnSpec spec;
        spec.argv = {"/bin/true"};
        spec.log_file = log;
        auto child = ChildProcess::spawn(spec);
        ::_exit(!child && child.error().code == "no_resources" ? 0 : 1);
    }
    int status = 0;
    ::waitpid(tester, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "no_resources expected";
    std::filesystem::remove(log);
}

TEST(ChildProcess, AProgramThatCannotBeExecutedIsAnErrorSayingWhy) {
    const auto not_a_program = scratch_file("not-a-program");
    std::ofstream(not_a_program) << "\x7f"
                                 << "ELF garbage";
    std::filesystem::permissions(not_a_program, std::filesystem::perms::owner_all);
    SpawnSpec spec;
    spec.argv = {not_a_program.string()};
    auto child = ChildProcess::spawn(spec);
    ASSERT_FALSE(child);
    EXPECT_EQ(child.error().code, "spawn_failed");
    EXPECT_NE(child.error().message.find("Exec format error"), std::string::npos)
        << child.error().message;
    spec.argv = {"no-such-program-anywhere"};
    EXPECT_EQ(ChildProcess::spawn(spec).error().code, "program_not_found");
    std::filesystem::remove(not_a_program);
}

TEST(ProcessIdentity, APidAndItsStartTimeNameOneProcess) {
    auto self = identify_process(::getpid());
    ASSERT_TRUE(self) << self.error().message;
    EXPECT_GT(self->start_time, 0);
    EXPECT_EQ(check_identity(*self).verdict, IdentityVerdict::same);
    auto other = *self;
    other.start_time += 1;
    const auto reused = check_identity(other);
    EXPECT_EQ(reused.verdict, IdentityVerdict::reused);
    EXPECT_NE(reused.message.find("now belongs to another process"), std::string::npos);
    EXPECT_EQ(check_identity({1, 1}).verdict, IdentityVerdict::unknown) << "init is never ours";
    EXPECT_FALSE(boot_id().empty());
}

TEST(ProcessIdentity, AnExitedProcessIsGoneEvenBeforeItIsReaped) {
    auto child = sleeper();
    const auto identity = identify_process(child->pid());
    ASSERT_TRUE(identity);
    ::kill(child->pid(), SIGKILL);
    // Not reaped yet: a zombie, whose pid still exists but no longer runs anything.
    for (int i = 0; i < 200 && check_identity(*identity).verdict == IdentityVerdict::same; ++i)
        std::this_thread::sleep_for(5ms);
    EXPECT_EQ(check_identity(*identity).verdict, IdentityVerdict::gone);
    for (int i = 0; i < 200 && !child->poll_exit(); ++i)
        std::this_thread::sleep_for(5ms);
    ASSERT_TRUE(child->exited());
    auto reaped = identify_process(identity->pid);
    ASSERT_FALSE(reaped);
    EXPECT_EQ(reaped.error().code, "gone") << reaped.error().message;
}

TEST(RecordedProcess, KillsTheGroupOnlyOfTheProvenProcess) {
    auto child = sleeper();
    const auto record = RecordedProcess::of_running(child->pid());
    ASSERT_TRUE(record);
    EXPECT_EQ(record->group, child->pid()) << "a child leads its own group when spawn returns";

    auto stale = *record;
    stale.leader.start_time -= 1;
    const auto refused = kill_if_ours(stale, SIGKILL, "engine");
    EXPECT_EQ(refused.outcome, KillOutcome::not_ours) << refused.message;
    EXPECT_FALSE(child->poll_exit()) << "a start time that does not match kills nothing";

    auto earlier_boot = *record;
    earlier_boot.boot_id = "an-earlier-boot";
    EXPECT_EQ(kill_if_ours(earlier_boot, SIGKILL, "engine").outcome, KillOutcome::gone);

    const auto killed = kill_if_ours(*record, SIGKILL, "engine");
    EXPECT_EQ(killed.outcome, KillOutcome::killed);
    EXPECT_NE(killed.message.find("and its process group"), std::string::npos) << killed.message;
    EXPECT_TRUE(wait_until_gone(record->leader, 5s));
    EXPECT_EQ(kill_if_ours(*record, SIGKILL, "engine").outcome, KillOutcome::gone);
}

// One per test: ctest runs the tests in parallel processes.
std::filesystem::path record_dir() {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("ensemble-os-test-" + std::to_string(::getpid()) + "-records");
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

TEST(RecordFile, RoundTripsAndRefusesWhatIsNotARecord) {
    const auto path = record_dir() / "engine-1.pid";
    {
        auto file = RecordFile::acquire(path);
        ASSERT_TRUE(file) << file.error().message;
        EXPECT_FALSE((*file)->read().value()) << "a new record is empty";
        ASSERT_TRUE((*file)->write({{4242, 987654}, 4242, "boot-1"}));
        auto back = (*file)->read();
        ASSERT_TRUE(back && *back) << back.error().message;
        EXPECT_EQ((*back)->leader, (ProcessIdentity{4242, 987654}));
        EXPECT_EQ((*back)->group, 4242);
        EXPECT_EQ((*back)->boot_id, "boot-1");
    }
    for (const char* garbage :
         {"12 x 3 b\n", "1 5 1 b\n", "-5 5 -5 b\n", "99 0 99 b\n", "99 5 98 b\n",
          "4294967395 5 4294967395 b\n", "99 5 99 b extra\n", "99 5 99 b"}) {
        std::ofstream(path) << garbage;
        auto file = RecordFile::acquire(path);
        ASSERT_TRUE(file) << file.error().message;
        auto bad = (*file)->read();
        ASSERT_FALSE(bad) << garbage;
        EXPECT_EQ(bad.error().code, "bad_record") << garbage;
        EXPECT_EQ(bad.error().message.find("extra"), std::string::npos) << "never echoed";
    }
    std::ofstream(path) << std::string(10000, '7') << '\n';
    EXPECT_FALSE((*RecordFile::acquire(path))->read()) << "an endless line is refused, unread";
}

TEST(RecordFile, AWriteThatCannotHappenIsAClearErrorNotAHalfRecord) {
    const auto path = record_dir() / "engine-3.pid";
    auto file = RecordFile::acquire(path);
    ASSERT_TRUE(file);
    ASSERT_TRUE((*file)->write({{4242, 987654}, 4242, "boot-1"}));
    // As good as a full disk: no byte may be written to any file.
    rlimit saved{};
    ::getrlimit(RLIMIT_FSIZE, &saved);
    const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit none = saved;
    none.rlim_cur = 0;
    ::setrlimit(RLIMIT_FSIZE, &none);
    const auto written = (*file)->write({{4343, 1}, 4343, "boot-1"});
    ::setrlimit(RLIMIT_FSIZE, &saved);
    ::signal(SIGXFSZ, old_handler);
    ASSERT_FALSE(written);
    EXPECT_EQ(written.error().code, "record_unwritable");
    EXPECT_NE(written.error().message.find("cannot write the engine record " + path.string()),
              std::string::npos)
        << written.error().message;
    const auto left = (*file)->read();
    ASSERT_TRUE(left);
    EXPECT_FALSE(*left) << "the old record is gone, and no half of the new one is left";
}

TEST(RecordFile, OneLiveWorkerHoldsIt) {
    const auto path = record_dir() / "engine-2.pid";
    auto first = RecordFile::acquire(path);
    ASSERT_TRUE(first);
    auto second = RecordFile::acquire(path);
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().code, "record_in_use");
    EXPECT_NE(second.error().message.find("give each its own --log-file"), std::string::npos);
    first->reset();  // the holder is gone: the record is free for the next worker
    EXPECT_TRUE(RecordFile::acquire(path));
}

TEST(RecordFile, NeverThroughALinkAFifoOrAFileOthersCanWrite) {
    const auto dir = record_dir();
    std::ofstream(dir / "precious") << "do not touch\n";
    std::filesystem::create_symlink(dir / "precious", dir / "link.pid");
    auto link = RecordFile::acquire(dir / "link.pid");
    ASSERT_FALSE(link);
    EXPECT_EQ(link.error().code, "record_unsafe");
    std::filesystem::create_hard_link(dir / "precious", dir / "hard.pid");
    EXPECT_EQ(RecordFile::acquire(dir / "hard.pid").error().code, "record_unsafe");
    ASSERT_EQ(::mkfifo((dir / "fifo.pid").c_str(), 0600), 0);
    EXPECT_EQ(RecordFile::acquire(dir / "fifo.pid").error().code, "record_unsafe")
        << "refused at once, never blocked in open";
    std::ofstream(dir / "shared.pid") << "";
    std::filesystem::permissions(dir / "shared.pid", std::filesystem::perms::all);
    EXPECT_EQ(RecordFile::acquire(dir / "shared.pid").error().code, "record_unsafe");
    std::ifstream in(dir / "precious");
    std::string text;
    std::getline(in, text);
    EXPECT_EQ(text, "do not touch");
}

TEST(RecordedProcess, ARecordWhoseGroupIsNotItsPidIsNeverActedOn) {
    auto leader = sleeper();
    auto record = *RecordedProcess::of_running(leader->pid());
    record.group = ::getpgrp();  // the test's own group, which it must not lose
    const auto refused = kill_if_ours(record, SIGKILL, "engine");
    EXPECT_EQ(refused.outcome, KillOutcome::not_ours) << refused.message;
    EXPECT_FALSE(leader->poll_exit());
    EXPECT_FALSE(RecordedProcess::from_stored(leader->pid(), 5, ::getpgrp(), ""));
    EXPECT_FALSE(RecordedProcess::from_stored(4294967296LL + leader->pid(), 5,
                                              4294967296LL + leader->pid(), ""))
        << "no truncation to someone's pid";
}

TEST(RecordedProcess, WhatALeaderLeavesInItsGroupIsReportedAndKilledWithIt) {
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c", "sleep 30 & sleep 0.3"};
    auto child = ChildProcess::spawn(spec);
    ASSERT_TRUE(child);
    const auto record = *RecordedProcess::of_running((*child)->pid());
    std::this_thread::sleep_for(800ms);  // the leader has exited (a zombie); its sleep lives on
    ASSERT_TRUE(process_group_has_members(record.group));
    const auto report = kill_if_ours(record, SIGKILL, "engine");
    EXPECT_EQ(report.outcome, KillOutcome::unknown);
    EXPECT_NE(report.message.find("kill -KILL -" + std::to_string(record.group)), std::string::npos)
        << report.message;
    ASSERT_TRUE((*child)->poll_exit()) << "reaping the leader kills what is left of its group";
    for (int i = 0; i < 200 && process_group_has_members(record.group); ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_FALSE(process_group_has_members(record.group));
}

TEST(PeerCredentials, TheKernelVouchesForTheOtherEnd) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    auto peer = peer_credentials(fds[0]);
    ASSERT_TRUE(peer) << peer.error().message;
    EXPECT_EQ(peer->uid, ::geteuid());
    EXPECT_EQ(peer->gid, ::getegid());
    ::close(fds[0]);
    ::close(fds[1]);
    EXPECT_FALSE(peer_credentials(-1));
}

TEST(ExecutablePath, IsThisTestBinary) {
    auto path = executable_path();
    ASSERT_TRUE(path) << path.error().message;
    if (path->filename().string().starts_with("ld-linux"))
        GTEST_SKIP() << "started through the dynamic loader (deploy/check-current-toolchain): "
                        "the executable is the loader";
    EXPECT_EQ(path->filename(), "ensemble_unit_tests");
    EXPECT_TRUE(std::filesystem::exists(*path));
}

TEST(ProcessMemory, MeasuresALiveProcessAndNothingForAGoneOne) {
    const auto mine = process_footprint(::getpid());
    ASSERT_TRUE(mine);
    EXPECT_GT(*mine, 100U * 1024);
    EXPECT_FALSE(process_footprint(0x3fffffff));
}

TEST(ProcessMemory, TheResidentShareOfAMappedFileIsWhatWasRead) {
    const auto file = std::filesystem::temp_directory_path() /
                      ("ensemble-mapped-" + std::to_string(::getpid()) + ".bin");
    constexpr std::size_t kSize = 8 << 20;
    std::ofstream(file, std::ios::binary) << std::string(kSize, 'x');
    EXPECT_FALSE(mapped_file_resident_bytes(::getpid(), file)) << "not mapped yet";
    const int fd = ::open(file.c_str(), O_RDONLY);
    auto* bytes =
        static_cast<const volatile char*>(::mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0));
    ::close(fd);
    ASSERT_NE(bytes, MAP_FAILED);
    const auto untouched = mapped_file_resident_bytes(::getpid(), file);
    ASSERT_TRUE(untouched);
    // Read the first half, page by page (without read-ahead past it, as far as possible).
    ::madvise(const_cast<char*>(bytes), kSize, MADV_RANDOM);
    for (std::size_t at = 0; at < kSize / 2; at += 4096)
        (void)bytes[at];
    const auto half = mapped_file_resident_bytes(::getpid(), file);
    ASSERT_TRUE(half);
    EXPECT_GE(*half, kSize / 2);
    EXPECT_LT(*half, kSize / 2 + (1 << 20)) << "the unread half is not counted";
    for (std::size_t at = kSize / 2; at < kSize; at += 4096)
        (void)bytes[at];
    EXPECT_EQ(mapped_file_resident_bytes(::getpid(), file), kSize);
    // Reached through a symlink (the Hugging Face cache's snapshots/ point into blobs/): the
    // same file.
    const auto link = file.string() + ".link";
    std::filesystem::create_symlink(file, link);
    EXPECT_EQ(mapped_file_resident_bytes(::getpid(), link), kSize);
    std::filesystem::remove(link);
    ::munmap(const_cast<char*>(bytes), kSize);
    EXPECT_FALSE(mapped_file_resident_bytes(::getpid(), file));
    std::filesystem::remove(file);
}

TEST(MemoryLimits, PhysicalMemoryAndTheBudgetableShare) {
    EXPECT_GT(physical_memory(), 0U);
    EXPECT_GT(budgetable_memory(), 0U);
    EXPECT_LE(budgetable_memory(), physical_memory());
}

TEST(MemoryPressure, PsiLevelsFollowTheStallShares) {
    EXPECT_EQ(pressure_from_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"
                                "full avg10=0.00 avg60=0.00 avg300=0.00 total=4\n"),
              MemoryPressure::normal);
    EXPECT_EQ(pressure_from_psi("some avg10=12.50 avg60=1.00 avg300=0.00 total=5\n"
                                "full avg10=3.00 avg60=0.00 avg300=0.00 total=4\n"),
              MemoryPressure::warning);
    EXPECT_EQ(pressure_from_psi("some avg10=90.00 avg60=40.00 avg300=9.00 total=5\n"
                                "full avg10=50.00 avg60=20.00 avg300=4.00 total=4\n"),
              MemoryPressure::critical);
    EXPECT_EQ(pressure_from_psi(""), MemoryPressure::unknown);
    EXPECT_EQ(pressure_from_psi("some avg10=lots\n"), MemoryPressure::unknown);
    EXPECT_EQ(pressure_from_psi("full avg10=1e999\n"), MemoryPressure::unknown);
}

TEST(MemoryPressure, DarwinLevelsAreOneTwoAndFour) {
    EXPECT_EQ(pressure_from_darwin_level(1), MemoryPressure::normal);
    EXPECT_EQ(pressure_from_darwin_level(2), MemoryPressure::warning);
    EXPECT_EQ(pressure_from_darwin_level(4), MemoryPressure::critical);
    EXPECT_EQ(pressure_from_darwin_level(3), MemoryPressure::unknown);
    EXPECT_EQ(pressure_from_darwin_level(0), MemoryPressure::unknown);
}

TEST(MemoryPressure, OomKillCountsAreReadFromCgroupFiles) {
    EXPECT_EQ(parse_oom_kill_count("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n"), 2U);
    EXPECT_EQ(parse_oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n"), 7U);
    EXPECT_FALSE(parse_oom_kill_count("nothing here"));
}

TEST(GpuWiredLimit, DefaultShareAndTheCommandThatSetsIt) {
    EXPECT_EQ(default_wired_limit_bytes(192ULL << 30), (192ULL << 30) / 100 * 75);
    EXPECT_EQ(wired_limit_command(163840), "sudo sysctl iogpu.wired_limit_mb=163840");
    auto limit = gpu_wired_limit();
    ASSERT_TRUE(limit);
#ifdef __APPLE__
    EXPECT_TRUE(limit->applies);
#else
    EXPECT_FALSE(limit->applies) << "Linux has no GPU wired limit";
#endif
}

}  // namespace
