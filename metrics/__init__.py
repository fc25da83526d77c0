"""evalkit's built-in metrics, one family per module, each with its paper.

Installed as the package ``evalkit_metrics`` (see the README: a top-level ``metrics``
package would collide with other distributions that ship one). The registry in
:mod:`evalkit.scoring.registry` reads ``BUILTINS``; nothing is discovered by scanning.
"""

from evalkit_metrics.answers import Accuracy, MajorityVote
from evalkit_metrics.clip import ClipImageDiversity, ClipScore, ClipVendi, RefClipScore
from evalkit_metrics.distinct import DistinctN
from evalkit_metrics.ead import EAD
from evalkit_metrics.effective import Effective, Passing
from evalkit_metrics.homogeneity import Homogeneity
from evalkit_metrics.image_reference import ClipCoverage, ClipDensity, ClipFid, ClipKid, ClipPrecision, ClipRecall, Cmmd
from evalkit_metrics.judge import JudgeScore
from evalkit_metrics.length import MeanLength
from evalkit_metrics.lexical import MATTR, MTLD, TTR
from evalkit_metrics.mauve import Mauve
from evalkit_metrics.ngram_entropy import EntN
from evalkit_metrics.novelty import Novelty
from evalkit_metrics.noveltybench import DistinctK, UtilityK
from evalkit_metrics.pass_at_k import PassAtK
from evalkit_metrics.repetition import RepL, Repetition, SeqRepN
from evalkit_metrics.self_bleu import SelfBleu
from evalkit_metrics.semantic import RKE, Relevance, SemanticDiversity, Vendi
from evalkit_metrics.token_stats import NLL, Perplexity, TokenEntropy
from evalkit_metrics.zipf import Zipf

# registry name -> (metric class, fixed parameters)
BUILTINS = {
    "distinct_n": (DistinctN, {}),
    "distinct_1": (DistinctN, {"n": 1}),
    "distinct_2": (DistinctN, {"n": 2}),
    "distinct_3": (DistinctN, {"n": 3}),
    "distinct_4": (DistinctN, {"n": 4}),
    "mean_length": (MeanLength, {}),
    "self_bleu": (SelfBleu, {}),
    "ent_n": (EntN, {}),
    "ttr": (TTR, {}),
    "mattr": (MATTR, {}),
    "mtld": (MTLD, {}),
    "seq_rep_n": (SeqRepN, {}),
    "rep_l": (RepL, {}),
    "token_entropy": (TokenEntropy, {}),
    "nll": (NLL, {}),
    "perplexity": (Perplexity, {}),
    "semantic_diversity": (SemanticDiversity, {}),
    "vendi": (Vendi, {}),
    "relevance": (Relevance, {}),
    "novelty": (Novelty, {}),
    "clip_score": (ClipScore, {}),
    "ref_clip_score": (RefClipScore, {}),
    "clip_image_diversity": (ClipImageDiversity, {}),
    "clip_vendi": (ClipVendi, {}),
    "accuracy": (Accuracy, {}),
    "majority_vote": (MajorityVote, {}),
    "pass_at_k": (PassAtK, {}),
    **{f"pass_at_{k}": (PassAtK, {"k": k}) for k in (1, 5, 10, 100)},
    "mauve": (Mauve, {}),
    "judge_score": (JudgeScore, {}),
    "zipf": (Zipf, {}),
    "repetition": (Repetition, {}),
    "clip_fid": (ClipFid, {}),
    "clip_kid": (ClipKid, {}),
    "cmmd": (Cmmd, {}),
    "clip_precision": (ClipPrecision, {}),
    "clip_recall": (ClipRecall, {}),
    "clip_density": (ClipDensity, {}),
    "clip_coverage": (ClipCoverage, {}),
    "ead": (EAD, {}),
    "rke": (RKE, {}),
    "distinct_k": (DistinctK, {}),
    "utility_k": (UtilityK, {}),
    "effective": (Effective, {}),
    "passing": (Passing, {}),
    "homogeneity": (Homogeneity, {}),
}

__all__ = ["BUILTINS", "MATTR", "MTLD", "NLL", "TTR", "DistinctN", "EntN", "MeanLength", "Perplexity", "SelfBleu",
           "SeqRepN", "RepL", "TokenEntropy", "SemanticDiversity", "Vendi", "Relevance", "Novelty", "JudgeScore",
           "ClipScore", "ClipImageDiversity", "ClipVendi", "Accuracy", "MajorityVote", "PassAtK", "Mauve", "Zipf",
           "Repetition", "ClipFid", "ClipKid", "Cmmd", "ClipPrecision", "ClipRecall", "ClipDensity", "ClipCoverage",
           "EAD", "RKE", "DistinctK", "UtilityK", "Effective", "Passing", "Homogeneity"]
