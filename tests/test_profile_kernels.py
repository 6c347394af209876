"""benchmarks/profile_kernels.py on the CPU, on a tiny case (what the profile says, not how fast it is)."""
from __future__ import annotations

import json

from benchmarks import environment, profile_kernels
from benchmarks.implementations import OURS, OURS_CHANNELS_LAST, TORCHVISION
from benchmarks.shapes import FWD, FWD_BWD

# Per call of each implementation and pass: the operators of the op itself, each run once, and on
# forward+backward one gradient accumulation per leaf (input, offset, weight, mask, bias).
EXPECTED_CALLS = {
    (OURS, FWD): {"rcm_fsad::deform_conv2d": 1},
    (OURS, FWD_BWD): {"rcm_fsad::deform_conv2d": 1, "rcm_fsad::deform_conv2d_backward": 1,
                             "torch::autograd::AccumulateGrad": 5},
    (TORCHVISION, FWD): {"torchvision::deform_conv2d": 1},
    (TORCHVISION, FWD_BWD): {"torchvision::deform_conv2d": 1, "torchvision::_deform_conv2d_backward": 1,
                                    "torch::autograd::AccumulateGrad": 5},
}
# ours[channels_last] calls what ours calls, on other tensors.
EXPECTED_CALLS.update({(OURS_CHANNELS_LAST, p): EXPECTED_CALLS[OURS, p] for p in (FWD, FWD_BWD)})
BACKWARD_OPS = {"rcm_fsad::deform_conv2d_backward", "torchvision::_deform_conv2d_backward"}


def test_cpu_profile_of_a_tiny_case(tiny_case, tmp_path, capsys):
    # default --dtypes (fp32 bf16): bf16 is no CPU dtype of the case, so only fp32 runs
    tf32_before = environment.tf32_state()
    with environment.tf32_set_to(True):  # the profile turns TF32 off for itself, and back on after
        assert profile_kernels.main(["--device", "cpu", "--cases", "tiny", "--repeats", "2",
                                     "--out", str(tmp_path)]) == 0
        assert set(environment.tf32_state().values()) == {True}
    assert environment.tf32_state() == tf32_before
    printed = capsys.readouterr().out

    (json_path,) = tmp_path.glob("profile-cpu-*.json")
    (md_path,) = tmp_path.glob("profile-cpu-*.md")
    result = json.loads(json_path.read_text())
    assert list(result["meta"]["cases"]) == ["tiny"]
    profiles = result["profiles"]
    assert {(p["impl"], p["pass"]) for p in profiles} == set(EXPECTED_CALLS)
    for p in profiles:
        assert (p["case"], p["dtype"], p["status"]) == ("tiny", "fp32", "ok"), p
        assert p["wall_ms"] > 0 and p["device_ms"] > 0
        assert all(k["ms_per_call"] > 0 and k["launches_per_call"] > 0 for k in p["kernels"])
        calls = {k["name"]: k["launches_per_call"] for k in p["kernels"]}
        for name, count in EXPECTED_CALLS[(p["impl"], p["pass"])].items():
            assert calls.get(name) == count, (p["impl"], p["pass"], name, calls)
        if p["pass"] == FWD:  # under no_grad nothing of the backward runs
            assert not BACKWARD_OPS & set(calls), calls
        table = profile_kernels.top_rows(p["kernels"])
        assert len(table) <= profile_kernels.TOP_K + 1
        assert f"| `{table[0]['short_name']}` |" in md_path.read_text()
    assert "#### tiny · fp32 · fwd+bwd · ours" in printed


def test_unknown_case_is_a_clear_error(capsys):
    assert profile_kernels.main(["--device", "cpu", "--cases", "no_such_case"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark case" in err and "no_such_case" in err


def test_short_name_keeps_the_readable_part():
    ours = ("void rcm_fsad::kernels::deform_conv2d_implicit_gemm_wmma_kernel<c10::BFloat16, __nv_bfloat16, 64>"
            "(rcm_fsad::DeformConvGeometry, c10::BFloat16 const*, c10::BFloat16 const*, rcm_fsad::FieldStrides)")
    assert profile_kernels.short_name(ours) == \
        "rcm_fsad::kernels::deform_conv2d_implicit_gemm_wmma_kernel<c10::BFloat16, __nv_bfloat16, 64>"
    nested = ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
              "std::array<char*, 1ul> >(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)")
    assert profile_kernels.short_name(nested) == \
        "at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<…>, std::array<…> >"
    assert profile_kernels.short_name(nested, width=40) == "at::native::vectorized_elementwise_kern…"
    assert profile_kernels.short_name("aten::addmm") == "aten::addmm"
