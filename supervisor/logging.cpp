#include "supervisor/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace ensemble {

namespace {

// "%*": the sd-daemon(3) priority prefix journald reads from each stderr line.
class SyslogPriorityFlag : public spdlog::custom_flag_formatter {
  public:
    void format(const spdlog::details::log_msg& msg, const std::tm&,
                spdlog::memory_buf_t& dest) override {
        const char* prefix = "<6>";
        switch (msg.level) {
            case spdlog::level::trace:
            case spdlog::level::debug:
                prefix = "<7>";
                break;
            case spdlog::level::info:
                prefix = "<6>";
                break;
            case spdlog::level::warn:
                prefix = "<4>";
                break;
            case spdlog::level::err:
                prefix = "<3>";
                break;
            case spdlog::level::critical:
                prefix = "<2>";
                break;
            default:
                break;
        }
        dest.append(prefix, prefix + 3);
    }
    std::unique_ptr<custom_flag_formatter> clone() const override {
        return std::make_unique<SyslogPriorityFlag>();
    }
};

}  // namespace

bool stderr_is_journal() {
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (stream == nullptr) return false;
    struct stat st {};
    if (::fstat(2, &st) != 0) return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
    return dev == static_cast<unsigned long long>(st.st_dev) &&
           ino == static_cast<unsigned long long>(st.st_ino);
}

void configure_logging(const std::string& program, const std::filesystem::path& log_file,
                       const LogSettings& rotation) {
    // A second call (stderr until the config is read, then its --log-file) replaces the first
    // logger: spdlog refuses two of one name.
    spdlog::drop(program);
    std::shared_ptr<spdlog::logger> logger;
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    if (!log_file.empty()) {
        std::filesystem::create_directories(log_file.parent_path());
        logger = spdlog::rotating_logger_mt(program, log_file.string(), rotation.max_bytes,
                                            static_cast<std::size_t>(rotation.keep));
        logger->flush_on(spdlog::level::info);
        formatter->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l [" + program + "] %v");
    } else if (stderr_is_journal()) {
        logger = spdlog::stderr_logger_mt(program);
        formatter->add_flag<SyslogPriorityFlag>('*').set_pattern("%*%v");
    } else {
        logger = spdlog::stderr_logger_mt(program);
        formatter->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l [" + program + "] %v");
    }
    logger->set_formatter(std::move(formatter));
    spdlog::set_default_logger(logger);
}

}  // namespace ensemble
