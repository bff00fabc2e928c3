"""verify.run: the candidate and the references never share input storage."""

import copy

import torch

from verify.cases import Case
from verify.run import run_case


def test_an_in_place_op_in_the_candidate_cannot_feed_the_reference(tiny_model):
    candidate = copy.deepcopy(tiny_model)
    real = candidate.get_reconstruction_latents

    def scribbling(images):  # a fused kernel that writes into its input
        images.mul_(0.5)
        return real(images)

    candidate.get_reconstruction_latents = scribbling
    case = Case("reconstruction/b1/32x32", "reconstruction", 1, 32, 32)
    images = torch.randn(1, 3, 32, 32)
    given = images.clone()
    inputs = {"A": {"images": images, "text": None, "described": ["x"]}}
    run = run_case(case, inputs, candidate=candidate, reference=tiny_model, device=torch.device("cpu"),
                   precision="fp32", repeat=False, candidate_is_cpu_fused=True)
    assert torch.equal(images, given)  # the case's inputs are untouched
    with torch.no_grad():
        expected = tiny_model.get_reconstruction_latents(given)
    assert torch.equal(run.reference["A"]["latents"], expected)  # the reference saw the real inputs
    assert not torch.equal(run.candidate["A"]["latents"], run.reference["A"]["latents"])
