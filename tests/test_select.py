"""Tree selection keeps every selected node's parent, also when scores tie exactly."""
import torch

from eagle.config import TreeConfig
from eagle.tree.select import Candidates, top_of


def test_child_with_zero_log_prob_never_displaces_its_parent():
    tree = TreeConfig(total_token=2, depth=1, top_k=2)  # one node out of 2 + 4 candidates
    root = torch.log_softmax(torch.tensor([-1.0, 0.0, -50.0]), dim=-1)
    cands = Candidates(top_of(root, tree.top_k), tree.top_k)
    # the best root child's own best child is certain: log-prob exactly 0, the same score as it
    child = torch.tensor([[float("-inf"), float("-inf"), 0.0], [-1.0, -2.0, -3.0]])
    cands.expand(top_of(child, tree.top_k))
    drafted = cands.select(torch.tensor([7]), tree)
    assert drafted.parents.tolist() == [0]
    assert drafted.tokens.tolist() == [7, 1]  # the parent (token 1), not its tied child (token 2)
