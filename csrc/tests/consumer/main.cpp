// A consumer of the installed package: the l-inf PGD steps (delta and image forms) and SSIM (with its gradient)
// through <miga_fast/ops.h>, each checked against plain ATen.
#include <miga_fast/ops.h>

#include <cstdio>
#include <vector>

int main() {
  at::manual_seed(0);
  const at::Tensor x = at::rand({2, 3, 16, 16});
  at::Tensor delta = at::zeros_like(x);
  const at::Tensor grad = at::randn_like(x);
  const at::Tensor eps = at::tensor({8.0f / 255}), alpha = at::tensor({2.0f / 255});
  miga_fast::pgd_step_linf_(delta, grad, x, eps, alpha);
  const at::Tensor expected = at::clamp(x + at::clamp(alpha * at::sign(grad), -eps, eps), 0, 1) - x;
  if (!at::equal(delta, expected)) {
    std::printf("FAIL: pgd_step_linf_ differs from ATen\n");
    return 1;
  }
  at::Tensor adv = at::clamp(x + 0.01 * at::randn_like(x), 0, 1);
  const at::Tensor adv_expected = at::clamp(x + at::clamp(adv + alpha * at::sign(grad) - x, -eps, eps), 0, 1);
  miga_fast::pgd_step_linf_image_(adv, grad, x, eps, alpha);
  if (!at::equal(adv, adv_expected)) {
    std::printf("FAIL: pgd_step_linf_image_ differs from ATen\n");
    return 1;
  }
  const at::Tensor y = at::clamp(x + 0.1 * at::randn_like(x), 0, 1);
  const at::Tensor win = miga_fast::gaussian_window(11, 1.5);
  const at::Tensor value = miga_fast::ssim(x, y, win);
  // the same SSIM in plain ATen: separable "valid" Gaussian blur of the five moments
  auto blur = [&](const at::Tensor& t) {
    const at::Tensor h = win.view({1, 1, 1, 11}).expand({3, 1, 1, 11}).contiguous();
    const at::Tensor v = win.view({1, 1, 11, 1}).expand({3, 1, 11, 1}).contiguous();
    const std::vector<int64_t> one{1, 1}, zero{0, 0};
    const auto conv = [&](const at::Tensor& in, const at::Tensor& w) {
      return at::conv2d(in, w, at::Tensor(), at::IntArrayRef(one), at::IntArrayRef(zero), at::IntArrayRef(one), 3);
    };
    return conv(conv(t, h), v);
  };
  const at::Tensor mx = blur(x), my = blur(y);
  const at::Tensor vx = blur(x * x) - mx * mx, vy = blur(y * y) - my * my, cxy = blur(x * y) - mx * my;
  const double c1 = 1e-4, c2 = 9e-4;
  const at::Tensor map = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2));
  const at::Tensor want = map.flatten(1).mean(1);
  if (!at::allclose(value, want, 1e-5, 1e-6)) {
    std::printf("FAIL: ssim differs from ATen by %g\n", (value - want).abs().max().item<double>());
    return 1;
  }
  auto [v2, gx, gy] = miga_fast::ssim_value_and_grad(x, y, win);
  if (!at::allclose(v2, value) || gx.sizes() != x.sizes() || gy.abs().sum().item<double>() == 0) {
    std::printf("FAIL: ssim_value_and_grad\n");
    return 1;
  }
  bool rejected = false;
  try {
    miga_fast::ssim(x, y.slice(0, 0, 1), win);
  } catch (const c10::Error&) {
    rejected = true;
  }
  if (!rejected) {
    std::printf("FAIL: a shape mismatch was not rejected\n");
    return 1;
  }
  std::printf("miga_fast consumer: find_package, the ops and their checks work (SSIM %.4f, %.4f)\n",
              value[0].item<double>(), value[1].item<double>());
  return 0;
}
