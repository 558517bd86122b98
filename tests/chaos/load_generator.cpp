#include "tests/chaos/load_generator.h"

#include "tests/support/http_client.h"

namespace ensemble::testing {

LoadGenerator::LoadGenerator(unsigned short port, int threads, std::chrono::milliseconds pause,
                             Connections connections)
    : port_(port), threads_(threads), pause_(pause), connections_(connections) {}

LoadGenerator::~LoadGenerator() {
    if (running_) stop();
}

void LoadGenerator::start() {
    running_ = true;
    for (int i = 0; i < threads_; ++i)
        workers_.emplace_back([this, i] { run(i); });
}

std::vector<RequestOutcome> LoadGenerator::stop() {
    running_ = false;
    for (auto& t : workers_)
        t.join();
    workers_.clear();
    std::lock_guard lock(mutex_);
    return outcomes_;
}

std::size_t LoadGenerator::count() const {
    std::lock_guard lock(mutex_);
    return outcomes_.size();
}

void LoadGenerator::run(int thread_index) {
    KeptAliveConnection kept(port_);
    for (int n = thread_index; running_; n += threads_) {
        RequestOutcome o;
        o.streamed = n % 3 == 2;
        auto request = chat_request(
            std::string(R"({"messages":[{"role":"user","content":"chaos"}],"max_tokens":8)") +
                (o.streamed ? R"(,"stream":true})" : "}"),
            o.streamed);
        request.timeout = std::chrono::seconds(90);  // longer than any restart the policy allows
        o.start = RequestOutcome::Clock::now();
        const auto r = connections_ == Connections::kept_alive ? kept.request(request, o.reused)
                                                               : http_request(port_, request);
        o.end = RequestOutcome::Clock::now();
        o.status = r.status;
        o.complete = r.complete;
        // A response's own words say which part failed it.
        o.error = r.status == 0 || r.status == 200 ? r.error : r.body.substr(0, 300);
        o.refused = r.status == 0 && r.error.find("refused") != std::string::npos;
        o.stream_done = r.body.find("data: [DONE]") != std::string::npos;
        o.stream_error = o.streamed && r.status == 200 && !o.stream_done &&
                         r.body.find("\"error\"") != std::string::npos;
        {
            std::lock_guard lock(mutex_);
            outcomes_.push_back(o);
        }
        if (o.refused) std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (pause_.count() > 0) std::this_thread::sleep_for(pause_);
    }
}

}  // namespace ensemble::testing
