-- The catalog: a category tree, products whose sellable units are variants, bundles made of
-- component variants, and product images.

CREATE TABLE categories (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    slug        CITEXT NOT NULL,
    parent_id   UUID REFERENCES categories (id) ON DELETE RESTRICT,
    description TEXT,
    position    INT NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT categories_slug_key UNIQUE (slug),
    CONSTRAINT categories_not_own_parent CHECK (parent_id IS DISTINCT FROM id)
);
SELECT trigger_updated_at('categories');
CREATE INDEX categories_parent_idx ON categories (parent_id, position);

CREATE TABLE products (
    id               UUID PRIMARY KEY,
    type             TEXT NOT NULL CHECK (type IN ('simple', 'variable', 'bundle')),
    name             TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 300),
    slug             CITEXT NOT NULL,
    description      TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'active', 'archived')),
    category_id      UUID REFERENCES categories (id) ON DELETE RESTRICT,
    brand            TEXT,
    -- The price of variants that do not set their own, in minor units.
    price            BIGINT NOT NULL CHECK (price >= 0),
    compare_at_price BIGINT CHECK (compare_at_price >= 0),
    weight_grams     INT CHECK (weight_grams >= 0),
    length_mm        INT CHECK (length_mm >= 0),
    width_mm         INT CHECK (width_mm >= 0),
    height_mm        INT CHECK (height_mm >= 0),
    tags             TEXT[] NOT NULL DEFAULT '{}',
    rating_average   NUMERIC(3, 2) NOT NULL DEFAULT 0 CHECK (rating_average BETWEEN 0 AND 5),
    rating_count     INT NOT NULL DEFAULT 0 CHECK (rating_count >= 0),
    -- Kept by triggers from the live variants: the listing filters and sorts on them with indexes.
    price_min        BIGINT NOT NULL DEFAULT 0,
    price_max        BIGINT NOT NULL DEFAULT 0,
    skus             TEXT NOT NULL DEFAULT '',
    -- Weighted full-text document: name and skus (A), brand and tags (B), description (C).
    search_vector    TSVECTOR NOT NULL DEFAULT ''::tsvector,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT products_slug_key UNIQUE (slug)
);
SELECT trigger_updated_at('products');

CREATE FUNCTION products_search_vector() RETURNS trigger AS $$
BEGIN
    NEW.search_vector :=
        setweight(to_tsvector('english', NEW.name), 'A') ||
        setweight(to_tsvector('simple', NEW.skus), 'A') ||
        setweight(to_tsvector('simple', coalesce(NEW.brand, '') || ' ' || array_to_string(NEW.tags, ' ')), 'B') ||
        setweight(to_tsvector('english', NEW.description), 'C');
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER products_search_vector BEFORE INSERT OR UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION products_search_vector();

CREATE INDEX products_search_idx ON products USING gin (search_vector);
CREATE INDEX products_name_trgm_idx ON products USING gin (name gin_trgm_ops);
CREATE INDEX products_tags_idx ON products USING gin (tags);
CREATE INDEX products_category_idx ON products (category_id);
CREATE INDEX products_brand_idx ON products (lower(brand));
-- Customers only ever list active products: each sort has a partial index in its order.
CREATE INDEX products_active_newest_idx ON products (created_at DESC, id DESC) WHERE status = 'active';
CREATE INDEX products_active_price_asc_idx ON products (price_min, id) WHERE status = 'active';
CREATE INDEX products_active_price_desc_idx ON products (price_max DESC, id DESC) WHERE status = 'active';
CREATE INDEX products_active_rating_idx ON products (rating_average DESC, id DESC) WHERE status = 'active';
CREATE INDEX products_active_name_idx ON products (name, id) WHERE status = 'active';
CREATE INDEX products_status_newest_idx ON products (status, created_at DESC, id DESC);

CREATE TABLE product_variants (
    id           UUID PRIMARY KEY,
    product_id   UUID NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    sku          CITEXT NOT NULL,
    barcode      TEXT,
    -- {"size": "M", "color": "red"}; empty for a simple product's default variant.
    options      JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    -- NULL: the product's price.
    price        BIGINT CHECK (price >= 0),
    -- Units on hand. What can be sold is this minus the units held by pending orders.
    stock        INT NOT NULL DEFAULT 0 CHECK (stock >= 0),
    weight_grams INT CHECK (weight_grams >= 0),
    is_default   BOOLEAN NOT NULL DEFAULT false,
    position     INT NOT NULL DEFAULT 0,
    -- Deleted variants are archived, so past orders and carts still read them.
    archived_at  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT product_variants_sku_key UNIQUE (sku)
);
SELECT trigger_updated_at('product_variants');
CREATE UNIQUE INDEX product_variants_barcode_key ON product_variants (barcode) WHERE barcode IS NOT NULL;
CREATE UNIQUE INDEX product_variants_options_key ON product_variants (product_id, options) WHERE archived_at IS NULL;
CREATE INDEX product_variants_product_idx ON product_variants (product_id) WHERE archived_at IS NULL;
-- At most one default variant per product (and the index the product reads use to find it).
CREATE UNIQUE INDEX product_variants_default_key ON product_variants (product_id) WHERE is_default;

-- Keeps the product's price range and sku text in step with its live variants.
CREATE FUNCTION products_refresh_from_variants(pid UUID) RETURNS void AS $$
    UPDATE products p SET
        price_min = coalesce((SELECT min(coalesce(v.price, p.price)) FROM product_variants v
                              WHERE v.product_id = pid AND v.archived_at IS NULL), p.price),
        price_max = coalesce((SELECT max(coalesce(v.price, p.price)) FROM product_variants v
                              WHERE v.product_id = pid AND v.archived_at IS NULL), p.price),
        skus = coalesce((SELECT string_agg(v.sku::text, ' ') FROM product_variants v
                         WHERE v.product_id = pid AND v.archived_at IS NULL), '')
    WHERE p.id = pid;
$$ LANGUAGE sql;

CREATE FUNCTION product_variants_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM products_refresh_from_variants(OLD.product_id);
        RETURN OLD;
    END IF;
    -- Stock movements do not change the price range or skus: skip them (they are hot).
    IF TG_OP = 'UPDATE' AND NEW.price IS NOT DISTINCT FROM OLD.price AND NEW.sku = OLD.sku
       AND NEW.archived_at IS NOT DISTINCT FROM OLD.archived_at THEN
        RETURN NEW;
    END IF;
    PERFORM products_refresh_from_variants(NEW.product_id);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER product_variants_changed AFTER INSERT OR UPDATE OR DELETE ON product_variants
    FOR EACH ROW EXECUTE FUNCTION product_variants_changed();

CREATE FUNCTION products_price_changed() RETURNS trigger AS $$
BEGIN
    PERFORM products_refresh_from_variants(NEW.id);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER products_price_changed AFTER INSERT OR UPDATE OF price ON products
    FOR EACH ROW WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION products_price_changed();

-- A bundle product is sold through its own default variant and reserves these components.
CREATE TABLE bundle_components (
    bundle_id  UUID NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    variant_id UUID NOT NULL REFERENCES product_variants (id) ON DELETE RESTRICT,
    quantity   INT NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    PRIMARY KEY (bundle_id, variant_id)
);
CREATE INDEX bundle_components_variant_idx ON bundle_components (variant_id);

CREATE TABLE product_images (
    id           UUID PRIMARY KEY,
    product_id   UUID NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    object_key   TEXT NOT NULL,
    url          TEXT NOT NULL,
    content_type TEXT NOT NULL,
    width        INT NOT NULL,
    height       INT NOT NULL,
    position     INT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX product_images_product_idx ON product_images (product_id, position);

-- Units of a variant held by pending orders. Nothing holds stock until the inventory lands; its
-- migration replaces this function.
CREATE FUNCTION variant_held(vid UUID) RETURNS INT AS $$
    SELECT 0;
$$ LANGUAGE sql STABLE;

-- Units of a variant that can be sold now: on hand minus held, for a live variant of a product
-- that is not archived.
CREATE FUNCTION variant_available(vid UUID) RETURNS INT AS $$
    SELECT CASE WHEN v.archived_at IS NULL AND p.status <> 'archived'
                THEN greatest(v.stock - variant_held(v.id), 0) ELSE 0 END
    FROM product_variants v JOIN products p ON p.id = v.product_id
    WHERE v.id = vid;
$$ LANGUAGE sql STABLE;

-- What a product can sell now: the sum over its variants, or for a bundle the number of whole
-- bundles its scarcest component allows.
CREATE FUNCTION product_available(pid UUID, ptype TEXT) RETURNS INT AS $$
    SELECT CASE WHEN ptype = 'bundle' THEN
        coalesce((SELECT min(variant_available(bc.variant_id) / bc.quantity)
                  FROM bundle_components bc WHERE bc.bundle_id = pid), 0)
    ELSE
        coalesce((SELECT sum(variant_available(v.id)) FROM product_variants v
                  WHERE v.product_id = pid AND v.archived_at IS NULL), 0)::INT
    END;
$$ LANGUAGE sql STABLE;
