"""Data intake: dataset sources (tensorflow-datasets, digits, image folders), the network check
before a download, decoding images, seeded splits."""
