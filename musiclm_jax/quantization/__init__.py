"""Vector quantization shared by the tokenizers: one k-means, the residual VQ, content fingerprints.

kmeans       squared distances and nearest-centre assignment (the one distance every quantizer uses); Lloyd's
             k-means inside jit (the RVQ's codebook initialisation) and mini-batch k-means++ on host data
             (the semantic tokens' clusters), saved as `KMeans`
rvq          `ResidualVQ`: EMA codebooks, quantizer dropout, dead-code revival (the codec's bottleneck and MuLan's
             conditioning tokens)
fingerprint  short content hashes of parameter trees and arrays, so tokens name the checkpoint they came from
"""
