#include "dist/zero_cost.h"

#include <string>

#include "core/error.h"

namespace zerolora::dist {

double ring_bytes_sent(Collective collective, int64_t payload_bytes, int world) {
  if (world <= 1) return 0;
  double share = double(world - 1) / double(world);
  switch (collective) {
    case Collective::AllReduce: return 2 * share * double(payload_bytes);
    case Collective::ReduceScatter: return share * double(payload_bytes);
    case Collective::AllGather: return share * double(payload_bytes);
    case Collective::Broadcast: return double(payload_bytes);
  }
  return 0;
}

namespace {

void check_stage_and_world(const char* where, int stage, int world) {
  core::check(stage >= 0 && stage <= 3, where,
              "ZeRO stage " + std::to_string(stage) + " does not exist", "use a stage from 0 to 3");
  core::check(world >= 1, where, "world size " + std::to_string(world) + " is not positive");
}

}  // namespace

ZeroStepVolume zero_step_volume(const ZeroStepShape& s) {
  check_stage_and_world("dist::zero_step_volume", s.stage, s.world);
  const double gas = double(s.gradient_accumulation_steps);
  const double reductions = s.grads_reduced_every_micro_step ? gas : 1.0;
  const double grads = double(s.trainable_elements) * s.grad_bytes;
  const double params = double(s.trainable_elements) * s.trainable_param_bytes;
  auto ring = [&](Collective c, double bytes) { return ring_bytes_sent(c, int64_t(bytes), s.world); };

  ZeroStepVolume v;
  switch (s.stage) {
    case 0:
      v.all_reduce_bytes = ring(Collective::AllReduce, grads);
      break;
    case 1:
      v.all_reduce_bytes = ring(Collective::AllReduce, grads);
      v.all_gather_bytes = ring(Collective::AllGather, params);
      break;
    case 2:
      v.reduce_scatter_bytes = reductions * ring(Collective::ReduceScatter, grads);
      v.all_gather_bytes = ring(Collective::AllGather, params);
      break;
    case 3: {
      const double gathered_per_pass =
          double(s.frozen_gathered_elements) * s.frozen_param_bytes +
          double(s.trainable_elements - s.trainable_persistent_elements) * s.trainable_param_bytes;
      const double persistent =
          double(s.trainable_persistent_elements) * s.trainable_param_bytes;
      v.reduce_scatter_bytes = reductions * ring(Collective::ReduceScatter, grads);
      v.all_gather_bytes = gas * 2 * ring(Collective::AllGather, gathered_per_pass) +
                           gas * ring(Collective::AllGather, double(s.frozen_forward_only_elements) * s.frozen_param_bytes) +
                           ring(Collective::AllGather, persistent);
      break;
    }
  }
  return v;
}

double zero_model_state_bytes_per_rank(const ZeroMemoryShape& s) {
  check_stage_and_world("dist::zero_model_state_bytes_per_rank", s.stage, s.world);
  const double n = double(s.world);
  const double frozen = double(s.frozen_elements) * s.frozen_bytes;
  const double trainable = double(s.trainable_elements);
  const double p = s.trainable_param_bytes, g = s.grad_bytes, k = s.optimizer_bytes;
  switch (s.stage) {
    case 0: return frozen + (p + g + k) * trainable;
    case 1: return frozen + (p + g) * trainable + k * trainable / n;
    case 2: return frozen + p * trainable + (g + k) * trainable / n;
    default:
      return (frozen + (p + g + k) * trainable) / n +
             p * double(s.trainable_persistent_elements) +
             s.frozen_bytes * double(s.frozen_persistent_elements + s.working_set_elements);
  }
}

}  // namespace zerolora::dist
