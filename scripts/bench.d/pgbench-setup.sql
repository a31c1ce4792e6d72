-- The same-run ceilings of scripts/bench, on a throwaway database: one hot row that every client
-- decrements (what a naive stock reservation does) and a table that every client inserts a row
-- into (what a cart add or an order writes, at the least).
CREATE TABLE hot (id int PRIMARY KEY, stock bigint NOT NULL CHECK (stock >= 0));
INSERT INTO hot VALUES (1, 1000000000000);
CREATE TABLE lines (
    id         uuid PRIMARY KEY,
    variant_id uuid NOT NULL,
    quantity   int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
