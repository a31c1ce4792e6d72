INSERT INTO lines (id, variant_id, quantity) VALUES (gen_random_uuid(), gen_random_uuid(), 1);
