-- What the diffusion methods of `foil neg-image` (p2p, inpaint) read, shard by shard: every text
-- negative of a curated row, with the edit and the raw shard holding the positive's image. The
-- stage keeps the kinds its recipe names and counts the rest.
CREATE OR REPLACE VIEW neg_image_candidates AS
SELECT n.sample_id, n.kind, n.caption, n.negative_caption, n.edit_span, n.edit_from, n.edit_to, c.shard
FROM negatives n
JOIN curated c USING (sample_id);
