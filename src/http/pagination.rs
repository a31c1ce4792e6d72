//! `?page=1&per_page=20` in, `{items, page, per_page, total}` out. `per_page` is clamped to 100,
//! never refused.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const DEFAULT_PER_PAGE: u32 = 20;
pub const MAX_PER_PAGE: u32 = 100;

#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1-based page number (default 1; 0 is read as 1).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_i64)]
    pub page: Option<u32>,
    /// Items per page (default 20, at most 100; other values are clamped to 1 to 100).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_i64)]
    pub per_page: Option<u32>,
}

impl PageParams {
    pub fn page(&self) -> u32 {
        self.page.unwrap_or(1).max(1)
    }

    pub fn per_page(&self) -> u32 {
        self.per_page
            .unwrap_or(DEFAULT_PER_PAGE)
            .clamp(1, MAX_PER_PAGE)
    }

    pub fn limit(&self) -> i64 {
        i64::from(self.per_page())
    }

    pub fn offset(&self) -> i64 {
        i64::from(self.page() - 1) * self.limit()
    }

    pub fn wrap<T>(&self, items: Vec<T>, total: i64) -> Paged<T> {
        Paged {
            items,
            page: self.page(),
            per_page: self.per_page(),
            total,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub per_page: u32,
    pub total: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_clamped_not_refused() {
        let params = PageParams {
            page: Some(0),
            per_page: Some(1000),
        };
        assert_eq!((params.page(), params.per_page()), (1, 100));
        let params = PageParams {
            page: Some(3),
            per_page: Some(0),
        };
        assert_eq!(
            (params.page(), params.per_page(), params.offset()),
            (3, 1, 2)
        );
        let params = PageParams::default();
        assert_eq!(
            (params.page(), params.per_page(), params.offset()),
            (1, 20, 0)
        );
    }
}
