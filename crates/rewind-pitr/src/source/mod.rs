pub mod mariadb;
pub mod pg;
