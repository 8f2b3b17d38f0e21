-- The seq counters of a group of debates, bumped in one call for a grouped append
-- (src/store/group.rs). One indexed UPDATE per debate, in id order: lease renewals lock
-- their rows in the same order, so the two never deadlock, and the plan never depends on
-- the planner's idea of how big `debates` is (a join of the whole group against the table
-- was planned as a sequential scan while a fresh table filled faster than statistics
-- were kept). A debate whose lease has moved on (fenced) or that does not exist is left
-- out of the result. Additive: the previous binary never calls it.
CREATE FUNCTION aragora_bump_seqs(ids TEXT[], counts BIGINT[], owners TEXT[], generations BIGINT[])
RETURNS TABLE (debate_id TEXT, base BIGINT)
LANGUAGE plpgsql VOLATILE ROWS 100 AS $$
DECLARE
    i INTEGER;
    bumped BIGINT;
BEGIN
    FOR i IN SELECT u.o FROM unnest(ids) WITH ORDINALITY AS u(v, o) ORDER BY u.v LOOP
        UPDATE debates AS d SET last_seq = d.last_seq + counts[i]
        WHERE d.id = ids[i]
          AND (owners[i] IS NULL
               OR (d.lease_owner = owners[i] AND d.lease_generation = generations[i]))
        RETURNING d.last_seq INTO bumped;
        IF FOUND THEN
            debate_id := ids[i];
            base := bumped - counts[i];
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
