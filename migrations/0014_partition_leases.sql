-- Ownership of the actor keys, fenced in PostgreSQL (docs/ARCHITECTURE.md, "Partitions and the
-- fence"). Every actor key (a variant, a coupon, a cart, an order) maps to one of P partitions. A
-- node that takes a partition bumps its epoch here before it loads that partition's state, and
-- every transaction that writes owned state first calls shop_fence() with the epochs it took: a
-- stale owner's transaction either holds its share lock before the bump (and the bump, and so the
-- new owner's load, waits for it to end) or finds a higher epoch and is rolled back.
CREATE TABLE partition_leases (
    partition int PRIMARY KEY CHECK (partition >= 0),
    epoch bigint NOT NULL CHECK (epoch > 0),
    -- Which node took it, for operators (`SELECT * FROM partition_leases`).
    owner text NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now()
);

-- Raises SQLSTATE 'SH001' unless every (partition, epoch) pair is still current, and holds a
-- share lock on those rows until the calling transaction ends (the epoch bump's UPDATE waits
-- for it). `partitions` holds no duplicates.
CREATE FUNCTION shop_fence(partitions int[], epochs bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current int;
BEGIN
    SELECT count(*) INTO current FROM (
        SELECT 1 FROM partition_leases l
        JOIN unnest(partitions, epochs) AS f(partition, epoch)
          ON l.partition = f.partition AND l.epoch = f.epoch
        FOR SHARE OF l
    ) AS held;
    IF current <> cardinality(partitions) THEN
        RAISE EXCEPTION 'not the owner: partition(s) % were taken at a higher epoch', partitions
            USING ERRCODE = 'SH001';
    END IF;
END
$$;
