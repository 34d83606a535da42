"""The alpha-mixed training batch in one place (paper Sec. 3.3, Eq. 3): ``MixSettings`` (the sources'
shares and how they are drawn), ``indices`` (which rows of each source step t takes), ``sources``
(arrays and stores behind one ``gather``) and ``batches`` (the batch builder that puts a step's
chunks on the device)."""
