#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/runtime.h"
#include "io/checkpoint_dir.h"

namespace zerolora::train {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = int64_t(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60), (long long)(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

namespace {

// mpirun hands each rank a pseudo-terminal for stdout whatever mpirun's own stdout is (`mpirun ... > log`
// too), so a rank cannot tell; under mpirun the plain lines are used.
bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK");
}

}  // namespace

Progress::Progress(bool quiet, int64_t total_steps, const std::string& metrics_path, const std::string& tensorboard_dir)
    : quiet_(quiet), tty_(!quiet && isatty(fileno(stdout)) && !launched_by_mpirun()), total_(total_steps),
      metrics_path_(metrics_path),
      last_line_(std::chrono::steady_clock::now()) {
  if (const char* env = std::getenv("ZEROLORA_PROGRESS_SECONDS")) {
    char* end = nullptr;
    const double s = std::strtod(env, &end);
    if (end != env && *end == '\0' && s >= 0) line_interval_s_ = s;
  }
  if (!quiet && !tensorboard_dir.empty())
    tensorboard_ = std::make_unique<EventWriter>(EventWriter::open(tensorboard_dir, wall_time_now()));
}

void Progress::clear_bar() {
  if (bar_shown_) std::printf("\r\033[K");
  bar_shown_ = false;
}

void Progress::step(int64_t step, double loss, double lr, double tokens_per_second, double seconds_left) {
  if (quiet_) return;
  if (!tty_) {
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_line_).count() < line_interval_s_ && step < total_) return;
    last_line_ = now;
    std::printf("progress: step %lld/%lld (%.0f%%)  loss %.4f  lr %.3g  %.0f tok/s  ETA %s  mem %.2f GiB\n",
                (long long)step, (long long)total_, total_ > 0 ? 100.0 * double(step) / double(total_) : 0.0, loss, lr,
                tokens_per_second, format_duration(seconds_left).c_str(),
                double(core::current_rss_bytes()) / double(1ll << 30));
    std::fflush(stdout);
    return;
  }
  const int width = 24;
  const int filled = total_ > 0 ? int(width * std::min<double>(1.0, double(step) / double(total_))) : 0;
  std::string bar(size_t(filled), '#');
  bar += std::string(size_t(width - filled), '.');
  std::printf("\r\033[K[%s] %lld/%lld loss %.4f lr %.3g %.0f tok/s ETA %s mem %.2f GiB", bar.c_str(), (long long)step,
              (long long)total_, loss, lr, tokens_per_second, format_duration(seconds_left).c_str(),
              double(core::current_rss_bytes()) / double(1ll << 30));
  std::fflush(stdout);
  bar_shown_ = true;
}

void Progress::log(const nlohmann::json& entry) {
  if (quiet_) return;
  clear_bar();
  std::ostringstream line;
  bool first = true;
  for (const auto& [k, v] : entry.items()) {
    line << (first ? "" : "  ") << k << " ";
    if (v.is_number_float())
      line << (std::abs(v.get<double>()) < 1e-3 && v.get<double>() != 0 ? std::to_string(v.get<double>())
                                                                        : (std::ostringstream() << v.get<double>()).str());
    else
      line << v.dump();
    first = false;
  }
  std::printf("%s\n", line.str().c_str());
  std::fflush(stdout);
  if (!metrics_path_.empty()) {
    std::ofstream f(metrics_path_, std::ios::app);
    f << entry.dump() << "\n";
  }
  if (tensorboard_) tensorboard_->add_log_entry(entry, entry.value("step", int64_t(0)), wall_time_now());
}

void Progress::message(const std::string& text) {
  if (quiet_) return;
  clear_bar();
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

void write_loss_curve_svg(const std::vector<nlohmann::json>& log_history, const std::string& path) {
  struct Series {
    const char* key;
    const char* colour;
    std::vector<std::pair<double, double>> points;
  };
  Series series[] = {{"loss", "#1f77b4", {}}, {"eval_loss", "#d62728", {}}, {"learning_rate", "#2ca02c", {}}};
  for (const auto& e : log_history)
    for (auto& s : series)
      if (e.contains(s.key) && e.contains("step") && e[s.key].is_number())
        s.points.push_back({e["step"].get<double>(), e[s.key].get<double>()});
  const double W = 720, H = 360, L = 60, R = 60, T = 30, B = 40;
  double max_step = 1, max_loss = 0, min_loss = 1e300, max_lr = 0;
  for (auto& s : series)
    for (auto& [x, y] : s.points) {
      max_step = std::max(max_step, x);
      if (std::string(s.key) == "learning_rate") {
        max_lr = std::max(max_lr, y);
      } else {
        max_loss = std::max(max_loss, y);
        min_loss = std::min(min_loss, y);
      }
    }
  if (min_loss > max_loss) min_loss = 0, max_loss = 1;
  if (max_loss - min_loss < 1e-9) max_loss = min_loss + 1;
  if (max_lr <= 0) max_lr = 1;
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  svg << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  svg << "<text x=\"" << W / 2 << "\" y=\"" << H - 8 << "\" text-anchor=\"middle\">step (max " << max_step << ")</text>\n";
  svg << "<text x=\"8\" y=\"" << T - 10 << "\">loss " << min_loss << " .. " << max_loss << "</text>\n";
  svg << "<text x=\"" << W - R << "\" y=\"" << T - 10 << "\" text-anchor=\"end\" fill=\"#2ca02c\">learning rate (max " << max_lr << ")</text>\n";
  for (auto& s : series) {
    if (s.points.empty()) continue;
    const bool lr = std::string(s.key) == "learning_rate";
    svg << "<polyline fill=\"none\" stroke=\"" << s.colour << "\" stroke-width=\"1.5\" points=\"";
    for (auto& [x, y] : s.points) {
      const double px = L + (W - L - R) * x / max_step;
      const double frac = lr ? y / max_lr : (y - min_loss) / (max_loss - min_loss);
      svg << px << "," << (H - B - (H - T - B) * frac) << " ";
    }
    svg << "\"/>\n";
  }
  int legend = 0;
  for (auto& s : series)
    if (!s.points.empty())
      svg << "<text x=\"" << L + 10 << "\" y=\"" << T + 15 + 15 * legend++ << "\" fill=\"" << s.colour << "\">" << s.key << "</text>\n";
  svg << "</svg>\n";
  io::write_file_synced(path, svg.str());
}

}  // namespace zerolora::train
